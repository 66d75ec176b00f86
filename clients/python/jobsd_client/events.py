"""Watch events as the SDK hands them out: `JobEvent`, whose `type` is an `EventType` (an IntEnum with names).

`pb.JobEvent.type` is a bare int (protobuf enums are ints in Python: `2`, not "status"). The clients' watch
streams yield `JobEvent` instead: the same fields, `type` as `EventType.STATUS` (which prints as "status" and still
equals `pb.JobEvent.TYPE_STATUS`, 2), and the message itself as `.message` for whatever needs the protobuf.
"""

from __future__ import annotations

import enum
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from jobsd_client import pb
from jobsd_client.convert import from_timestamp

__all__ = ["EventType", "JobEvent"]


class EventType(enum.IntEnum):
    """What a watch event says. An int (it compares equal to `pb.JobEvent.TYPE_*`) with a name."""

    UNSPECIFIED = pb.JobEvent.TYPE_UNSPECIFIED
    # The job as it is when the stream opens (or re-syncs).
    SNAPSHOT = pb.JobEvent.TYPE_SNAPSHOT
    # Its status changed.
    STATUS = pb.JobEvent.TYPE_STATUS
    # Only its progress or figures changed (may be coalesced for a slow reader).
    PROGRESS = pb.JobEvent.TYPE_PROGRESS
    # WatchJobs: every matching job that had not ended has been sent.
    SYNCED = pb.JobEvent.TYPE_SYNCED

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def of(cls, value: int) -> EventType:
        """The type of `value`; UNSPECIFIED for a value this SDK does not know (a newer server's)."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


class JobEvent:
    """One event of WatchJob / WatchJobs, as the clients' watch streams yield it.

    `type` (EventType), `job` (empty for SYNCED), `revision`, `resume_after` (see WatchJobsRequest.changed_since),
    and the protobuf `message` it was read from. Compare `type` with EventType members (`event.type is
    EventType.STATUS`); it also equals the protobuf ints at run time, but a type checker keeps the two apart.
    """

    __slots__ = ("message", "type")

    def __init__(self, message: pb.JobEvent) -> None:
        self.message = message
        self.type = EventType.of(message.type)

    def __repr__(self) -> str:
        job = f", job={self.job.id!r}" if self.has_job else ""
        return f"JobEvent(type={self.type}{job}, revision={self.revision})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobEvent) and other.message == self.message

    __hash__ = None  # type: ignore[assignment]  # mutable message inside: not hashable, as pb messages are not

    @property
    def job(self) -> pb.Job:
        """The job as of this event (an empty message for SYNCED)."""
        return self.message.job

    @property
    def has_job(self) -> bool:
        """False for SYNCED (it carries no job)."""
        return self.message.HasField("job")

    @property
    def revision(self) -> int:
        """The job's revision (0 for SYNCED)."""
        return self.message.revision

    @property
    def resume_after(self) -> Timestamp:
        """Where a WatchJobs stream resumes from (pass it as `changed_since`); see `resumes_at` for a datetime."""
        return self.message.resume_after

    @property
    def resumes_at(self) -> datetime | None:
        """`resume_after` as an aware datetime; None if the server sent none."""
        if not self.message.HasField("resume_after"):
            return None
        return from_timestamp(self.message.resume_after)

    def HasField(self, name: str) -> bool:
        """`message.HasField(name)`: the protobuf spelling, so code written for `pb.JobEvent` runs unchanged."""
        return self.message.HasField(name)  # type: ignore[arg-type]
