"""What every in-process harness handle (`tests.support.server.Server`, the gateway's `Gateway`, the security
suites' `Stack` and `Tenants`) says the same way: how a token is sent, where the REST gateway is."""

from __future__ import annotations

from jobsd.app import JobsdApp

__all__ = ["AppEndpoints", "bearer_header", "bearer_metadata"]


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that sends `token` (`authorization: Bearer ...`)."""
    return (("authorization", f"Bearer {token}"),)


def bearer_header(token: str) -> dict[str, str]:
    """The HTTP header that sends `token` to the REST gateway."""
    return {"Authorization": f"Bearer {token}"}


class AppEndpoints:
    """Mixin of a harness dataclass with an `app` field: the REST base URL and the bearer metadata."""

    app: JobsdApp

    @property
    def rest(self) -> str:
        """The REST gateway's base URL (`http://127.0.0.1:PORT`)."""
        return f"http://127.0.0.1:{self.app.http_port}"

    @staticmethod
    def md(token: str) -> tuple[tuple[str, str], ...]:
        """gRPC metadata that sends `token`."""
        return bearer_metadata(token)
