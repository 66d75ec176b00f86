"""Tokens, scopes and who may do what. Transport-free: the edges turn a bearer string into a Principal."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from jobsd.domain.model import Job, TokenRecord
from jobsd.errors import InvalidArgument, PermissionDenied

__all__ = [
    "ADMIN",
    "DATASOURCES_CREATE",
    "JOBS_CREATE",
    "JOBS_EXECUTE",
    "NO_ACCESS",
    "Principal",
    "ReadScope",
    "Readable",
    "hash_token",
    "new_token_secret",
    "validate_scope",
]

ADMIN = "ADMIN"
DATASOURCES_CREATE = "DATASOURCES:CREATE"
JOBS_CREATE = "JOBS:CREATE"
JOBS_EXECUTE = "JOBS:EXECUTE"
_DS_READ = "DATASOURCES:READ:"
_PIPES_READ = "PIPES:READ:"
_PLAIN_SCOPES = frozenset({ADMIN, DATASOURCES_CREATE, JOBS_CREATE, JOBS_EXECUTE})

NO_ACCESS = "The token you have provided doesn't have access to this resource"
# Scopes that read and cancel every job of the workspace.
_WIDE_READ = frozenset({ADMIN, DATASOURCES_CREATE, JOBS_CREATE})
_WRITE = frozenset({ADMIN, DATASOURCES_CREATE, JOBS_CREATE})


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token_secret() -> str:
    return "jobsd_" + secrets.token_urlsafe(32)


def validate_scope(scope: str) -> str:
    if scope in _PLAIN_SCOPES:
        return scope
    for prefix in (_DS_READ, _PIPES_READ):
        if scope.startswith(prefix) and len(scope) > len(prefix):
            return scope
    raise InvalidArgument(
        "scope",
        f"unknown scope {scope!r}; expected one of ADMIN, DATASOURCES:CREATE, JOBS:CREATE, JOBS:EXECUTE, "
        "DATASOURCES:READ:<name>, PIPES:READ:<name>",
    )


class Readable(Protocol):
    """What read authorisation looks at: a `Job`, or the store's light `JobRecord` of one."""

    @property
    def workspace_id(self) -> str: ...

    @property
    def datasource_name(self) -> str | None: ...

    @property
    def pipe_name(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What a principal may read in one workspace: everything, or only jobs on these data sources / pipes."""

    workspace_id: str
    everything: bool
    datasource_names: frozenset[str] = frozenset()
    pipe_names: frozenset[str] = frozenset()

    def allows(self, job: Readable) -> bool:
        if job.workspace_id != self.workspace_id:
            return False
        if self.everything:
            return True
        return (job.datasource_name in self.datasource_names) or (job.pipe_name in self.pipe_names)


@dataclass(frozen=True, slots=True)
class Principal:
    token_name: str
    # None: every workspace (internal service tokens).
    workspace_id: str | None
    scopes: frozenset[str]

    @classmethod
    def from_record(cls, record: TokenRecord) -> Principal:
        return cls(token_name=record.name, workspace_id=record.workspace_id, scopes=frozenset(record.scopes))

    def _has_any(self, wanted: frozenset[str]) -> bool:
        return bool(self.scopes & wanted)

    def workspace(self, requested: str | None) -> str:
        """The workspace a request acts on: the token's own, or the requested one for every-workspace tokens."""
        requested = requested or None
        if self.workspace_id is None:
            if requested is None:
                raise InvalidArgument("workspace_id", "is required with a token that spans every workspace")
            return requested
        if requested is not None and requested != self.workspace_id:
            raise PermissionDenied(NO_ACCESS)
        return self.workspace_id

    def read_scope(self, workspace_id: str) -> ReadScope:
        if self._has_any(_WIDE_READ):
            return ReadScope(workspace_id, everything=True)
        ds = frozenset(s[len(_DS_READ) :] for s in self.scopes if s.startswith(_DS_READ))
        pipes = frozenset(s[len(_PIPES_READ) :] for s in self.scopes if s.startswith(_PIPES_READ))
        if not ds and not pipes:
            raise PermissionDenied(
                "The token lacks the scope to read jobs: needs ADMIN, DATASOURCES:CREATE, JOBS:CREATE, "
                "DATASOURCES:READ:<name> or PIPES:READ:<name>"
            )
        return ReadScope(workspace_id, everything=False, datasource_names=ds, pipe_names=pipes)

    def check_read(self, job: Readable) -> None:
        if self.workspace_id is not None and job.workspace_id != self.workspace_id:
            raise PermissionDenied(NO_ACCESS)
        if self._has_any(_WIDE_READ):
            return  # reads every job of the workspace (read_scope's `everything`), without building the scope
        try:
            scope = self.read_scope(job.workspace_id)
        except PermissionDenied:
            raise PermissionDenied(NO_ACCESS) from None
        if not scope.allows(job):
            raise PermissionDenied(NO_ACCESS)

    def check_write(self, job: Job) -> None:
        """Cancel and retry: every job of the workspace for the wide scopes only."""
        if self.workspace_id is not None and job.workspace_id != self.workspace_id:
            raise PermissionDenied(NO_ACCESS)
        if not self._has_any(_WRITE):
            raise PermissionDenied(NO_ACCESS)

    def require_create(self) -> None:
        if not self._has_any(_WRITE):
            raise PermissionDenied(
                "The token lacks the scope to create jobs: needs JOBS:CREATE, DATASOURCES:CREATE or ADMIN"
            )

    def require_execute(self) -> None:
        if JOBS_EXECUTE not in self.scopes:
            raise PermissionDenied("The token lacks the JOBS:EXECUTE scope that workers need")

    def require_admin(self) -> None:
        if ADMIN not in self.scopes:
            raise PermissionDenied("The token lacks the ADMIN scope")
