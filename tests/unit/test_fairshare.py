"""The fair-share rule itself (jobsd.domain.fairshare): the order a claim looks at workspaces, turns, the share."""

from __future__ import annotations

import pytest

from jobsd.domain.fairshare import (
    DEFAULT_MAX_WORKSPACE_SHARE,
    Candidate,
    WorkspaceShare,
    after_claim,
    claim_order,
    next_turn,
)
from jobsd.errors import InvalidArgument
from jobsd.settings import settings_from


def test_never_served_first_then_least_recently_served_ties_by_oldest_job_then_id() -> None:
    candidates = [
        Candidate("recent", served=30, oldest_us=1),
        Candidate("older-turn", served=10, oldest_us=99),
        Candidate("new-young", served=None, oldest_us=50),
        Candidate("new-old", served=None, oldest_us=5),
        Candidate("b-same", served=20, oldest_us=7),
        Candidate("a-same", served=20, oldest_us=7),
    ]
    assert claim_order(candidates) == ["new-old", "new-young", "older-turn", "a-same", "b-same", "recent"]


def test_a_workspace_at_its_share_comes_after_every_workspace_below_it() -> None:
    share = WorkspaceShare(cap=2, held={"a": 2, "b": 1})
    candidates = [Candidate("a", served=None), Candidate("b", served=5), Candidate("c", served=9)]
    assert claim_order(candidates, share) == ["b", "c", "a"]
    # One more for b: b is at its share too, and the two at their share keep their turn order.
    assert claim_order(candidates, share.plus("b")) == ["c", "a", "b"]
    assert after_claim(None, "a") is None


def test_the_share_is_a_whole_number_of_slots_at_least_one_and_off_when_it_cannot_bite() -> None:
    share = WorkspaceShare.of(0.5, 4, {"a": 1})
    assert share is not None and share.cap == 2 and not share.at_share("a") and share.plus("a").at_share("a")
    small = WorkspaceShare.of(0.1, 4, {})
    assert small is not None and small.cap == 1
    assert WorkspaceShare.of(1.0, 16, {}) is None  # all of them
    assert WorkspaceShare.of(0.5, 1, {}) is None  # one slot: a workspace always gets one
    most = WorkspaceShare.of(0.9, 4, {})
    assert most is not None and most.cap == 3  # 3.6 slots: 3 of 4
    assert WorkspaceShare.of(0.99, 2, {}) is not None and WorkspaceShare.of(0.5, 2, {}) is not None
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            WorkspaceShare.of(bad, 4, {})


def test_a_turn_goes_after_every_candidate_and_reads_as_a_time() -> None:
    assert next_turn(1_000, [Candidate("a", served=None)]) == 1_000
    assert next_turn(1_000, [Candidate("a", served=5_000), Candidate("b", served=None)]) == 5_001
    assert next_turn(9_000, [Candidate("a", served=5_000)]) == 9_000


def test_the_setting_is_a_share_in_0_1_named_when_refused() -> None:
    assert settings_from({}).max_workspace_share == DEFAULT_MAX_WORKSPACE_SHARE == 0.5
    assert settings_from({"JOBSD_MAX_WORKSPACE_SHARE": "0.25"}).max_workspace_share == 0.25
    assert settings_from({"JOBSD_MAX_WORKSPACE_SHARE": "1"}).max_workspace_share == 1.0
    for bad in ("0", "-0.1", "1.5", "nan", "inf", "half"):
        with pytest.raises(InvalidArgument) as refused:
            settings_from({"JOBSD_MAX_WORKSPACE_SHARE": bad})
        assert refused.value.field == "JOBSD_MAX_WORKSPACE_SHARE" and "at most 1" in str(refused.value)
