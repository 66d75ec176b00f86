"""The REST gateway: the Tinybird Jobs API (JSON, status codes, errors) over `jobsd.api.base.JobsApi`.

`GatewayServer` serves it (in-process inside `jobsd serve`), `GrpcJobsApi` reaches a remote jobsd, and
`run_standalone` is `jobsd gateway --grpc-target`.
"""

from jobsd.api.remote import GrpcJobsApi
from jobsd.gateway.server import GatewayServer
from jobsd.gateway.standalone import run_standalone

__all__ = ["GatewayServer", "GrpcJobsApi", "run_standalone"]
