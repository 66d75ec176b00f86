"""The table-driven state machine (docs/contract.md #the-job, #queue, #retention): every allowed move, every refused
one, the bookkeeping that goes with each target status, and properties of random action sequences (hypothesis)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsd.domain.kinds import KindDefaults, build_registry, parse_kind_declarations
from jobsd.domain.model import (
    TERMINAL_STATUSES,
    Job,
    JobStatus,
    Progress,
    QueryProgress,
    Statistics,
)
from jobsd.domain.rules import concurrency_key
from jobsd.domain.states import LINGER_AFTER_END, TRANSITIONS, Action, apply_progress, transition
from jobsd.errors import FailedPrecondition
from tests.support.jobs import waiting_job

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(hours=48)
LEASE = timedelta(seconds=30)
USEC = timedelta(microseconds=1)
# The built-in kinds, and two an operator declared: one whose workers stop part-way, one whose workers cannot.
KINDS = build_registry(
    KindDefaults(lease=LEASE, retention=RETENTION),
    [
        (
            "test",
            parse_kind_declarations(
                "test", "thumbnail = {cancellable_while_working = true}\nresize = {concurrency_limit = 2}"
            ),
        )
    ],
)
ALL_KINDS = list(KINDS.names)
CANCELLABLE_WHILE_WORKING = {"populateview", "copy", "thumbnail"}

W, R, C = JobStatus.WAITING, JobStatus.WORKING, JobStatus.CANCELLING
DONE, ERR, CAN = JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED

# The life cycle as docs/contract.md #the-job, #queue describe it, written out independently of the module under test.
EXPECTED: dict[tuple[JobStatus, Action], JobStatus] = {
    (W, Action.CLAIM): R,
    (W, Action.CANCEL): CAN,
    (R, Action.CANCEL): C,
    (R, Action.FINISH_DONE): DONE,
    (R, Action.FINISH_ERROR): ERR,
    (R, Action.RELEASE): W,
    (R, Action.LEASE_REQUEUE): W,
    (R, Action.LEASE_EXHAUSTED): ERR,
    (C, Action.FINISH_DONE): DONE,
    (C, Action.FINISH_ERROR): ERR,
    (C, Action.FINISH_CANCELLED): CAN,
    (C, Action.RELEASE): CAN,
    (C, Action.LEASE_REQUEUE): CAN,
    (C, Action.LEASE_EXHAUSTED): CAN,
    (R, Action.RUN_TIME_EXCEEDED): ERR,
    (C, Action.RUN_TIME_EXCEEDED): CAN,
    # A release of a job that has come back to the queue too often (JOBSD_MAX_RETURNS) ends it instead.
    (R, Action.RELEASE_EXHAUSTED): ERR,
    (C, Action.RELEASE_EXHAUSTED): CAN,
}
ALL_PAIRS = [(s, a) for s in JobStatus for a in Action]
REFUSED = [pair for pair in ALL_PAIRS if pair not in EXPECTED]


def make_job(status: JobStatus = W, kind: str = "populateview", **changes: object) -> Job:
    job = waiting_job(
        T0,
        kind=kind,
        concurrency_key=concurrency_key("ws", kind, "events", KINDS),
        expires_at=T0 + RETENTION,
        datasource={"id": "t_events", "name": "events"},
    )
    return replace(job, status=status, **changes)  # type: ignore[arg-type]


def at(job: Job, status: JobStatus, now: datetime = T0 + timedelta(minutes=1)) -> Job:
    """`job` driven through the real state machine to `status`."""
    paths = {
        W: [],
        R: [Action.CLAIM],
        C: [Action.CLAIM, Action.CANCEL],
        DONE: [Action.CLAIM, Action.FINISH_DONE],
        ERR: [Action.CLAIM, Action.FINISH_ERROR],
        CAN: [Action.CANCEL],
    }
    for action in paths[status]:
        job = move(job, action, now)
    assert job.status is status
    return job


def move(job: Job, action: Action, now: datetime, **kwargs: object) -> Job:
    if action is Action.CLAIM:
        kwargs.setdefault("worker_id", "w1")
        kwargs.setdefault("lease_token", uuid.uuid4().hex)
        kwargs.setdefault("lease_expires_at", now + LEASE)
    return transition(job, action, now, kind=KINDS.get(job.kind), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the table


def test_the_table_is_exactly_the_documented_life_cycle() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("status", "action"), list(EXPECTED), ids=lambda v: str(v.value))
def test_every_allowed_move_lands_on_its_target(status: JobStatus, action: Action) -> None:
    job = at(make_job(kind="populateview"), status)
    now = T0 + timedelta(minutes=5)
    moved = move(job, action, now)
    assert moved.status is EXPECTED[(status, action)]
    assert moved.revision == job.revision + 1
    assert moved.status_revision == moved.revision
    assert moved.updated_at == now
    assert moved.id == job.id and moved.created_at == job.created_at


@pytest.mark.parametrize(("status", "action"), REFUSED, ids=lambda v: str(v.value))
def test_every_move_missing_from_the_table_is_refused(status: JobStatus, action: Action) -> None:
    job = at(make_job(kind="populateview"), status)
    with pytest.raises(FailedPrecondition):
        move(job, action, T0 + timedelta(minutes=5))


@pytest.mark.parametrize("status", [DONE, ERR, CAN], ids=str)
def test_cancel_of_an_ended_job_says_not_cancellable(status: JobStatus) -> None:
    job = at(make_job(), status)
    with pytest.raises(FailedPrecondition) as info:
        move(job, Action.CANCEL, T0)
    assert str(info.value) == (
        f"Job is not in cancellable status: it is {status.value}, and populateview jobs can be cancelled while "
        "waiting or working"
    )


def test_cancel_of_a_cancelling_job_says_already_being_cancelled() -> None:
    job = at(make_job(), C)
    with pytest.raises(FailedPrecondition) as info:
        move(job, Action.CANCEL, T0)
    assert str(info.value) == "Job is already being cancelled"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cancel_while_working_only_for_kinds_declared_so(kind: str) -> None:
    job = at(make_job(kind=kind), R)
    assert KINDS.is_cancellable(job) is (kind in CANCELLABLE_WHILE_WORKING)
    if kind in CANCELLABLE_WHILE_WORKING:
        assert move(job, Action.CANCEL, T0).status is C
    else:
        with pytest.raises(FailedPrecondition) as info:
            move(job, Action.CANCEL, T0)
        # The documented message first (the Tinybird CLIs look for it), then the kind, the status and the rule.
        assert str(info.value) == (
            f"Job is not in cancellable status: it is working, and {kind} jobs can be cancelled only while waiting"
        )


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cancel_while_waiting_is_immediate_for_every_kind(kind: str) -> None:
    job = move(make_job(kind=kind), Action.CANCEL, T0)
    assert job.status is CAN and job.cancel_requested_at == T0 and not KINDS.is_cancellable(job)


def test_the_rules_of_another_kind_are_refused() -> None:
    with pytest.raises(ValueError, match="rules of kind 'copy' were given for a 'import' job"):
        transition(make_job(kind="import"), Action.CANCEL, T0, kind=KINDS.get("copy"))


def test_a_refused_move_names_the_job_and_the_status() -> None:
    job = at(make_job(), DONE)
    with pytest.raises(FailedPrecondition) as info:
        move(job, Action.FINISH_ERROR, T0)
    assert job.id in str(info.value) and "done" in str(info.value)


# ---------------------------------------------------------------- bookkeeping


def test_started_at_is_set_by_the_first_claim_only() -> None:
    job = make_job()
    first = move(job, Action.CLAIM, T0 + timedelta(seconds=1))
    assert first.started_at == T0 + timedelta(seconds=1)
    requeued = move(first, Action.LEASE_REQUEUE, T0 + timedelta(minutes=1))
    assert requeued.started_at == first.started_at
    second = move(requeued, Action.CLAIM, T0 + timedelta(minutes=2))
    assert second.started_at == T0 + timedelta(seconds=1)


def test_attempt_counts_claims_a_lapse_keeps_it_a_release_gives_it_back() -> None:
    job = move(make_job(), Action.CLAIM, T0)
    assert job.attempt == 1
    lapsed = move(job, Action.LEASE_REQUEUE, T0)
    assert lapsed.attempt == 1
    job = move(lapsed, Action.CLAIM, T0)
    assert job.attempt == 2
    released = move(job, Action.RELEASE, T0)
    assert released.attempt == 1
    assert move(released, Action.CLAIM, T0).attempt == 2


def test_returns_count_every_way_back_to_the_queue_lapses_and_releases_alike() -> None:
    job = make_job()
    for action in (Action.LEASE_REQUEUE, Action.RELEASE, Action.RELEASE, Action.LEASE_REQUEUE):
        job = move(move(job, Action.CLAIM, T0), action, T0)
    assert job.status is W and job.returns == 4
    ended = move(move(job, Action.CLAIM, T0), Action.RELEASE_EXHAUSTED, T0, error="came back too often")
    assert ended.status is ERR and ended.error == "came back too often" and ended.returns == 4


def test_claim_records_the_worker_and_its_lease() -> None:
    job = move(make_job(), Action.CLAIM, T0, worker_id="w7", lease_token="tok", lease_expires_at=T0 + LEASE)
    assert (job.worker_id, job.lease_token, job.lease_expires_at) == ("w7", "tok", T0 + LEASE)


@pytest.mark.parametrize("action", [Action.RELEASE, Action.LEASE_REQUEUE])
def test_back_to_waiting_clears_the_lease(action: Action) -> None:
    job = move(move(make_job(), Action.CLAIM, T0), action, T0 + timedelta(seconds=40))
    assert job.status is W
    assert job.worker_id is None and job.lease_token is None and job.lease_expires_at is None


@pytest.mark.parametrize(
    ("status", "action"), [pair for pair in EXPECTED if EXPECTED[pair] in TERMINAL_STATUSES], ids=lambda v: str(v.value)
)
def test_ending_clears_the_lease(status: JobStatus, action: Action) -> None:
    job = at(make_job(), status)
    ended = move(job, action, T0 + timedelta(minutes=2))
    assert ended.lease_token is None and ended.lease_expires_at is None


def test_cancelling_keeps_the_lease_so_the_worker_can_finish() -> None:
    job = at(make_job(), R)
    cancelling = move(job, Action.CANCEL, T0 + timedelta(minutes=2))
    assert cancelling.lease_token == job.lease_token and cancelling.lease_expires_at == job.lease_expires_at
    assert cancelling.cancel_requested_at == T0 + timedelta(minutes=2)
    assert not KINDS.is_cancellable(cancelling)


def test_expires_at_is_none_while_running() -> None:
    job = at(make_job(), R)
    assert job.expires_at is None
    assert move(job, Action.CANCEL, T0).expires_at is None


@pytest.mark.parametrize(
    ("status", "action"), [pair for pair in EXPECTED if EXPECTED[pair] in TERMINAL_STATUSES], ids=lambda v: str(v.value)
)
@pytest.mark.parametrize(
    "end_after",
    [timedelta(minutes=3), RETENTION - USEC, RETENTION, RETENTION + timedelta(hours=5)],
    ids=["early", "last-microsecond", "at-48h", "after-48h"],
)
def test_expires_at_of_an_ended_job_follows_the_48h_rule(
    status: JobStatus, action: Action, end_after: timedelta
) -> None:
    job = at(make_job(), status, now=T0 + timedelta(minutes=1))
    end = T0 + end_after
    ended = move(job, action, end)
    if end < T0 + RETENTION:
        assert ended.expires_at == T0 + RETENTION
    else:
        assert ended.expires_at == end + timedelta(hours=1) == end + LINGER_AFTER_END


def test_error_keeps_the_reason_and_has_a_default() -> None:
    job = at(make_job(), R)
    assert move(job, Action.FINISH_ERROR, T0, error="disk full").error == "disk full"
    assert move(job, Action.FINISH_ERROR, T0).error
    exhausted = move(job, Action.LEASE_EXHAUSTED, T0, error="abandoned 3 times")
    assert exhausted.error == "abandoned 3 times"


def test_done_populate_without_query_progress_reports_100_percent() -> None:
    job = at(make_job(kind="populateview"), R)
    assert move(job, Action.FINISH_DONE, T0).progress_percentage == 100.0
    imp = at(make_job(kind="import"), R)
    assert move(imp, Action.FINISH_DONE, T0).progress_percentage == 0.0


def test_finishing_carries_the_final_progress() -> None:
    job = at(make_job(kind="import"), R)
    done = move(job, Action.FINISH_DONE, T0, progress=Progress(statistics=Statistics(10, 2), quarantine_rows=3))
    assert done.statistics == Statistics(10, 2) and done.quarantine_rows == 3


# ---------------------------------------------------------------- progress


@pytest.mark.parametrize("status", [R, C], ids=str)
def test_progress_is_taken_while_running_and_is_not_a_status_change(status: JobStatus) -> None:
    job = at(make_job(), status)
    moved = apply_progress(job, Progress(progress_percentage=40.0), T0)
    assert moved.progress_percentage == 40.0 and moved.status is status
    assert moved.revision == job.revision + 1 and moved.status_revision == job.status_revision


@pytest.mark.parametrize("status", [W, DONE, ERR, CAN], ids=str)
def test_progress_is_refused_unless_running(status: JobStatus) -> None:
    job = at(make_job(), status)
    with pytest.raises(FailedPrecondition):
        apply_progress(job, Progress(progress_percentage=40.0), T0)


def test_query_progress_derives_the_percentage() -> None:
    job = at(make_job(), R)
    queries = (QueryProgress("q1", "done"), QueryProgress("q2", "working"), QueryProgress("q3", "waiting"))
    moved = apply_progress(job, Progress(queries=queries), T0)
    assert moved.queries == queries and moved.progress_percentage == pytest.approx(33.33)
    explicit = apply_progress(job, Progress(queries=queries, progress_percentage=50.0), T0)
    assert explicit.progress_percentage == 50.0


# ---------------------------------------------------------------- properties

RANK = {W: 0, R: 1, C: 2, DONE: 3, ERR: 3, CAN: 3}
REQUEUE_ACTIONS = {Action.RELEASE, Action.LEASE_REQUEUE}

steps = st.lists(
    st.tuples(
        st.sampled_from([*Action, "progress"]),
        st.integers(min_value=0, max_value=4 * 3600 * 1_000_000),  # microseconds the clock moves first
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(ALL_KINDS), script=steps)
def test_random_action_sequences_keep_every_invariant(kind: str, script: list[tuple[object, int]]) -> None:
    job = make_job(kind=kind)
    now = T0
    for action, gap in script:
        now += timedelta(microseconds=gap)
        if action == "progress":
            try:
                moved = apply_progress(job, Progress(progress_percentage=12.5), now)
            except FailedPrecondition:
                assert job.status not in (R, C), "progress refused while running"
                continue
            assert job.status in (R, C), "progress accepted while not running"
            assert moved.status is job.status and moved.revision == job.revision + 1
            assert moved.status_revision == job.status_revision
            job = moved
            continue
        assert isinstance(action, Action)
        try:
            moved = move(job, action, now)
        except FailedPrecondition:
            assert (
                job.status.is_terminal
                or (job.status, action) not in TRANSITIONS
                or (action is Action.CANCEL and job.kind not in CANCELLABLE_WHILE_WORKING)
            )
            continue
        assert not job.status.is_terminal, "a terminal job changed"
        assert moved.revision == job.revision + 1
        assert moved.status_revision == moved.revision, "a status change must set status_revision"
        assert moved.updated_at == now
        if RANK[moved.status] < RANK[job.status]:
            assert (job.status, moved.status) == (R, W) and action in REQUEUE_ACTIONS, (
                f"went backwards: {job.status} -{action}-> {moved.status}"
            )
        if moved.status in (R, C):
            assert moved.expires_at is None
        elif moved.status.is_terminal:
            assert moved.expires_at is not None and moved.expires_at > now
        assert moved.started_at is None or moved.started_at <= now
        if job.started_at is not None:
            assert moved.started_at == job.started_at
        job = moved


@settings(max_examples=100, deadline=None)
@given(
    terminal=st.sampled_from([DONE, ERR, CAN]),
    actions=st.lists(st.sampled_from([*Action, "progress"]), min_size=1, max_size=20),
)
def test_a_terminal_job_never_changes_again(terminal: JobStatus, actions: list[object]) -> None:
    job = at(make_job(), terminal)
    for action in actions:
        with pytest.raises(FailedPrecondition):
            if action == "progress":
                apply_progress(job, Progress(progress_percentage=1.0), T0)
            else:
                assert isinstance(action, Action)
                move(job, action, T0)


@pytest.mark.parametrize("how", [Action.LEASE_REQUEUE, Action.RELEASE])
def test_a_run_after_a_return_starts_its_figures_over_and_the_job_says_why(how: Action) -> None:
    now = T0 + timedelta(minutes=1)
    running = move(make_job(kind="import"), Action.CLAIM, now)
    figures = Progress(
        progress_percentage=47.0,
        queries=(QueryProgress("q1", "done"),),
        statistics=Statistics(bytes=8_600_000, row_count=10),
        quarantine_rows=2,
        invalid_lines=1,
        result={"rows": 3},
        errors=("bad line",),
    )
    running = apply_progress(running, figures, now)
    back = move(running, how, now)
    assert back.status is W and back.returns == 1 and back.progress_percentage == 47.0  # kept while it waits
    expected_how = (
        "its worker w1 stopped heartbeating (attempt 1 of 3)"
        if how is Action.LEASE_REQUEUE
        else "its worker w1 released it at a graceful stop (no attempt used)"
    )
    assert back.note == f"run 1 ended unfinished: {expected_how}; the next run starts over"
    again = move(back, Action.CLAIM, now + USEC, worker_id="w2")
    assert (again.progress_percentage, again.queries, again.statistics, again.processed_data) == (0.0, (), None, None)
    assert (again.quarantine_rows, again.invalid_lines, again.result, again.errors) == (0, 0, {}, ())
    assert again.note == back.note and again.returns == 1  # still says why this is its second run


def test_a_first_claim_keeps_the_job_as_it_is() -> None:
    job = make_job(kind="import")
    claimed = move(job, Action.CLAIM, T0 + timedelta(minutes=1))
    assert claimed.note is None and claimed.returns == 0
