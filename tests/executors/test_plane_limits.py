"""The data plane's DuckDB databases run with the limits they are given — never DuckDB's own defaults (80 % of
the machine's memory, every core, 90 % of the free disk) — and the settings that carry them read sizes clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.errors import InvalidArgument
from jobsd.executors.dataplane import DataPlane
from jobsd.executors.limits import PlaneLimits, format_bytes
from jobsd.executors.runner import plane_limits_for
from jobsd.settings import Settings, settings_from

from .conftest import WORKSPACE

MiB = 1024 * 1024
SETTINGS = (
    "SELECT current_setting('memory_limit'), current_setting('threads'), current_setting('max_temp_directory_size')"
)


async def test_each_workspace_database_gets_its_share_of_the_plane_s_memory(tmp_path: Path, clock: ManualClock) -> None:
    limits = PlaneLimits(
        job_memory_bytes=512 * MiB, plane_memory_bytes=1024 * MiB, job_threads=1, job_temp_disk_bytes=100 * MiB
    )
    # Up to 8 databases open at once (8 idle ones kept, 3 plane threads): 1 GiB / 8 = 128 MiB each, less than 512.
    async with DataPlane(tmp_path / "plane", clock=clock, threads=3, max_open=8, limits=limits) as plane:
        assert plane.memory_per_database == 128 * MiB
        memory, threads, temp = (await plane.query(SETTINGS, workspace=WORKSPACE))[0]
    assert (memory, threads, temp) == ("128.0 MiB", 1, "100.0 MiB")


async def test_the_job_limit_applies_when_it_is_the_smaller(tmp_path: Path, clock: ManualClock) -> None:
    limits = PlaneLimits(job_memory_bytes=64 * MiB, plane_memory_bytes=4096 * MiB)
    async with DataPlane(tmp_path / "plane", clock=clock, threads=2, max_open=4, limits=limits) as plane:
        assert plane.memory_per_database == 64 * MiB
        memory, threads, _ = (await plane.query(SETTINGS, workspace=WORKSPACE))[0]
    assert (memory, threads) == ("64.0 MiB", 2)


def test_the_defaults_give_256_mib_per_database_and_the_settings_carry_them() -> None:
    limits = plane_limits_for(Settings())
    assert limits == PlaneLimits()
    assert limits.memory_per_database(16) == 256 * MiB


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1048576", MiB), ("512MiB", 512 * MiB), ("4 GiB", 4096 * MiB), ("100MB", 100_000_000), ("1.5gib", 1536 * MiB)],
)
def test_sizes_read_as_people_write_them(raw: str, expected: int) -> None:
    assert settings_from({"JOBSD_IMPORT_MAX_BYTES": raw}).import_max_bytes == expected


@pytest.mark.parametrize("raw", ["", "lots", "12 parsecs", "-5MiB", "0"])
def test_a_bad_size_names_the_variable(raw: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        settings_from({"JOBSD_JOB_MEMORY_LIMIT": raw})
    assert refused.value.field == "JOBSD_JOB_MEMORY_LIMIT"


def test_sizes_are_shown_as_people_read_them() -> None:
    assert [format_bytes(n) for n in (700, 2048, 1536 * 1024, 256 * MiB, 4096 * MiB)] == [
        "700 bytes",
        "2 KiB",
        "1.5 MiB",
        "256 MiB",
        "4 GiB",
    ]
