"""Fair share: the order in which a claim looks at the workspaces that have waiting jobs (docs/contract.md#queue).

The rule, stated once here and applied by every store's claim:

- **Turns.** Every workspace has a *turn*: when a claim last served it, in µs of the claim's time (a claim that
  chose among several workspaces puts the one it served after all of them, `next_turn`, so claims at the same
  instant still go round). A claim looks at the workspaces with waiting jobs (of the kinds, and the workspace, it
  asked for) least recently served first — a workspace never served before comes first — and among equals the one
  whose oldest waiting job is oldest. Within a workspace it takes the oldest claimable job (FIFO), skipping full
  concurrency keys as before. So when several workspaces wait, claims take them round-robin, FIFO within each.
- **Max share.** A claimer that says how many slots it has (a worker stream, the built-in executors) and how many of
  them each workspace holds gives one workspace at most `cap` of them while another workspace has a job it could
  start: a workspace at its share is looked at only after every workspace below it. With no one else to serve, a
  workspace at its share still gets the job, so a lone workspace may use every slot.
- **Never early.** The order only decides which claimable job is taken, never whether one is: a claim that finds
  none in the first workspace looks at the next, and returns nothing only when no workspace has a claimable job.

A claim with only one workspace to look at reads no turns (it has nothing to order) and only moves that
workspace's turn to its own time. With concurrent claimers (several workers, several replicas) each claim orders
by the turns as it read them, so two claims at the same instant may both serve the same workspace: the turns are
exact for claims one after another, approximate under contention; correctness (no job claimed twice, limits held,
no early None) never depends on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import floor

__all__ = ["DEFAULT_MAX_WORKSPACE_SHARE", "Candidate", "WorkspaceShare", "after_claim", "claim_order", "next_turn"]

# JOBSD_MAX_WORKSPACE_SHARE: of a worker's slots, what one workspace may hold while another has a job it could start.
DEFAULT_MAX_WORKSPACE_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class WorkspaceShare:
    """The max-share rule of one claimer: a workspace holding `cap` or more of its slots is at its share.

    `held`: how many of the claimer's slots each workspace holds now (jobs assigned and not yet finished)."""

    cap: int
    held: Mapping[str, int]

    @classmethod
    def of(cls, share: float, slots: int, held: Mapping[str, int]) -> WorkspaceShare | None:
        """The rule for a claimer with `slots` slots in all and `share` (JOBSD_MAX_WORKSPACE_SHARE, in (0, 1]).
        None when it can never bite: a share of 1, or one slot (a workspace gets at least one slot)."""
        if not 0 < share <= 1:
            raise ValueError(f"a workspace share must be in (0, 1], got {share!r}")
        cap = max(1, floor(share * slots))
        if cap >= slots:
            return None
        return cls(cap, dict(held))

    def at_share(self, workspace_id: str) -> bool:
        """Whether the workspace holds its share already."""
        return self.held.get(workspace_id, 0) >= self.cap

    def plus(self, workspace_id: str) -> WorkspaceShare:
        """The rule after one more job claimed for `workspace_id` (the next claim of a batch counts it)."""
        return WorkspaceShare(self.cap, {**self.held, workspace_id: self.held.get(workspace_id, 0) + 1})


def after_claim(share: WorkspaceShare | None, workspace_id: str) -> WorkspaceShare | None:
    return None if share is None else share.plus(workspace_id)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A workspace with waiting jobs, as a claim sees it."""

    workspace_id: str
    # Its turn: when a claim last served it, in µs (None: never).
    served: int | None = None
    # created_at (µs) of its oldest waiting job of the requested kinds, when known (breaks ties between turns).
    oldest_us: int | None = None


def _order_key(candidate: Candidate) -> tuple[int, int, str]:
    return (
        -1 if candidate.served is None else candidate.served,
        0 if candidate.oldest_us is None else candidate.oldest_us,
        candidate.workspace_id,
    )


def claim_order(candidates: Iterable[Candidate], share: WorkspaceShare | None = None) -> list[str]:
    """The workspaces in the order a claim looks at them: below their share first, then at it; each group least
    recently served first, then oldest waiting job first (then by id, so the order is total)."""
    ordered = sorted(candidates, key=_order_key)
    if share is None:
        return [c.workspace_id for c in ordered]
    below = [c.workspace_id for c in ordered if not share.at_share(c.workspace_id)]
    return below + [c.workspace_id for c in ordered if share.at_share(c.workspace_id)]


def next_turn(now_us: int, candidates: Sequence[Candidate]) -> int:
    """The turn a claim gives the workspace it served: after every candidate's (so that workspace goes to the back
    of the line), and at least the claim's time in µs (so turns read as times, and grow across restarts)."""
    latest = max((c.served for c in candidates if c.served is not None), default=now_us - 1)
    return max(now_us, latest + 1)
