"""The one error taxonomy: codes as data, the code -> class table derived from the classes, the wire translator."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import jobsd_client
from jobsd import errors as server_errors
from jobsd.api.status import grpc_status
from jobsd_client import errors
from jobsd_client.errors import FIELD_METADATA_KEY, error_for_code, error_from_rpc


def _classes(cls: type[errors.JobsdError]) -> list[type[errors.JobsdError]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _classes(direct))]


def test_every_class_names_a_real_grpc_code_and_an_http_status() -> None:
    for cls in _classes(errors.JobsdError):
        assert cls.code_name in grpc.StatusCode.__members__, cls
        assert 400 <= cls.http_status <= 599, cls


@pytest.mark.parametrize(
    ("code", "cls", "http"),
    [
        ("INVALID_ARGUMENT", errors.InvalidArgument, 400),
        ("NOT_FOUND", errors.NotFound, 404),
        ("PERMISSION_DENIED", errors.PermissionDenied, 403),
        ("UNAUTHENTICATED", errors.Unauthenticated, 403),
        ("FAILED_PRECONDITION", errors.FailedPrecondition, 400),
        ("ALREADY_EXISTS", errors.AlreadyExists, 409),
        ("RESOURCE_EXHAUSTED", errors.ResourceExhausted, 429),
        ("UNAVAILABLE", errors.Unavailable, 503),
        ("DEADLINE_EXCEEDED", errors.DeadlineExceeded, 504),
        ("INTERNAL", errors.Internal, 500),
        ("DATA_LOSS", errors.JobsdError, 500),  # no class of its own: the base
    ],
)
def test_the_code_table_is_derived_from_the_classes(code: str, cls: type[errors.JobsdError], http: int) -> None:
    assert error_for_code(code) is cls
    assert cls.http_status == http


def test_a_refinement_never_takes_its_parents_code() -> None:
    assert issubclass(server_errors.StaleLease, errors.FailedPrecondition)
    assert error_for_code("FAILED_PRECONDITION") is errors.FailedPrecondition
    stale = server_errors.StaleLease("lease lapsed")
    assert (stale.code_name, stale.http_status, grpc_status(stale)) == (
        "FAILED_PRECONDITION",
        409,
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_the_server_and_the_sdk_share_one_hierarchy() -> None:
    assert server_errors.JobsdError is errors.JobsdError is jobsd_client.JobsdClientError
    assert server_errors.NotFound is jobsd_client.NotFound
    assert server_errors.FIELD_METADATA_KEY == FIELD_METADATA_KEY == "jobsd-field"
    bad = server_errors.InvalidArgument("page_size", "must be between 1 and 100")
    assert (bad.message, bad.field, bad.problem, bad.code) == (
        "page_size: must be between 1 and 100",
        "page_size",
        "must be between 1 and 100",
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert isinstance(bad, ValueError)
    assert errors.InvalidArgument.for_field("kind", "is required").message == "kind: is required"


class _FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str | bytes], ...] = ()):
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailing


def test_the_wire_translator_rebuilds_each_error() -> None:
    bad = error_from_rpc(
        _FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "kinds: unknown kind 'x'", ((FIELD_METADATA_KEY, b"kinds"),))
    )
    assert isinstance(bad, errors.InvalidArgument)
    assert (bad.message, bad.field, bad.problem) == ("kinds: unknown kind 'x'", "kinds", "unknown kind 'x'")
    missing = error_from_rpc(_FailedCall(grpc.StatusCode.NOT_FOUND, 'Job with id "j" not found'))
    assert type(missing) is errors.NotFound and missing.code is grpc.StatusCode.NOT_FOUND
    odd = error_from_rpc(_FailedCall(grpc.StatusCode.DATA_LOSS, ""))
    assert type(odd) is errors.JobsdError
    assert (odd.message, odd.code_name, odd.code) == ("DATA_LOSS", "DATA_LOSS", grpc.StatusCode.DATA_LOSS)
