"""The domain service layer: `JobService` (the one service every edge calls), its watch streams, the change
fan-out to watchers (`WatchHub`) and page tokens. It knows nothing of gRPC, HTTP or the store's technology."""

from jobsd.service.hub import WatchHub
from jobsd.service.jobs import Claim, HeartbeatResult, JobService
from jobsd.service.watches import WatchEvent

__all__ = ["Claim", "HeartbeatResult", "JobService", "WatchEvent", "WatchHub"]
