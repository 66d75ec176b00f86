"""Finding 1 — admin token theft: a JOBS:CREATE token of any workspace imported `file://<cwd>/.jobsd/admin-token`
and the CSV-header error printed the token. File imports now read only under the operator's import root, which
may not overlap any state directory; links and `..` are resolved before the check."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsd_client import pb
from tests.support.subprocess_server import run_jobsd

from .conftest import ADMIN_SECRET, LogRecords, Stack


async def test_a_tenant_cannot_import_the_admin_token_or_any_state_file(stack: Stack, logs: LogRecords) -> None:
    attacker = stack.beta.tokens["creator"]
    # The attack of the finding: append into an existing data source, so the header mismatch error would quote
    # the file's first line.
    (stack.imports / "one.csv").write_text("a\n1\n")
    assert (await stack.run(attacker, "import", "loot", url=f"file://{stack.imports}/one.csv")).status == (
        pb.JOB_STATUS_DONE
    )
    (stack.imports / "link-to-token.csv").symlink_to(stack.state / "admin-token")
    targets = [
        f"file://{stack.state}/admin-token",
        f"file://localhost{stack.state}/admin-token",
        f"file://{stack.imports}/../.jobsd/admin-token",
        f"file://{stack.imports}/link-to-token.csv",
        f"file://{stack.state}/jobsd.db",
        f"file://{stack.state}/jobsd.db-wal",
        f"file://{stack.app.executors.dataplane.path_of(stack.beta.workspace_id)}",
        f"file://{stack.app.executors.dataplane.path_of(stack.alpha.workspace_id)}",
        "file:///etc/passwd",
    ]
    for url in targets:
        job = await stack.run(attacker, "import", "loot", url=url, mode="append")
        assert job.status == pb.JOB_STATUS_ERROR, url
        assert job.error.endswith("file imports may only read the server's import directory"), job.error
    # Nothing was written: the data source still has its one row.
    admin = stack.beta.tokens["admin"]
    status, detail = await stack.get("/v0/datasources/loot", admin)
    assert status == 200 and detail["statistics"]["row_count"] == 1
    status, _ = await stack.get("/v0/jobs_log", admin, params={"limit": "100"})
    assert status == 200
    assert ADMIN_SECRET not in stack.everything_said()
    assert ADMIN_SECRET not in logs.text()


async def test_the_token_file_the_service_once_leaked_no_longer_authenticates_anything_stolen(stack: Stack) -> None:
    """The admin token works for its owner; a job error can never carry it to anyone else."""
    (stack.imports / "header.csv").write_text("x\n1\n")
    creator = stack.beta.tokens["creator"]
    job = await stack.run(creator, "import", "header_only", url=f"file://{stack.imports}/header.csv")
    assert job.status == pb.JOB_STATUS_DONE
    mismatched = await stack.run(creator, "import", "header_only", url=f"file://{stack.state}/admin-token")
    assert ADMIN_SECRET not in mismatched.error
    owner = await stack.jobs.GetWorkspace(pb.GetWorkspaceRequest(), metadata=stack.md(ADMIN_SECRET))
    assert owner.name == "default"


@pytest.mark.parametrize("root", ["state", "parent", "inside"])
async def test_jobsd_refuses_to_start_when_the_import_root_overlaps_its_state(tmp_path: Path, root: str) -> None:
    state = tmp_path / "state"
    (state / "inside").mkdir(parents=True)
    chosen = {"state": state, "parent": tmp_path, "inside": state / "inside"}[root]
    code, out, err = await run_jobsd(
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--store",
        f"sqlite:///{state}/jobsd.db",
        import_file_root=chosen,
        data_dir=state,
        http_addr="",
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: JOBSD_IMPORT_FILE_ROOT: ")
    assert "where jobsd keeps its state" in lines[-1]
    assert "Traceback" not in out + err
