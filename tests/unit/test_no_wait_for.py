"""No `asyncio.wait_for` in jobsd or its SDK: on Python 3.11 it loses a cancellation that lands in the same loop turn
as the awaited thing completing (it returns the result instead), so a task stopped at that moment runs on.

That is how an import's progress task, cancelled as its heartbeat was answered, went on waiting for figures that
never came: the job was never finished and the executors' stop waited for it forever. `asyncio.timeout` keeps the
cancellation (tests/client/test_worker.py has the race itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT / "service" / "jobsd", ROOT / "clients" / "python" / "jobsd_client")


def _wait_for_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "wait_for"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "asyncio"
    ]


def test_no_module_of_jobsd_or_its_sdk_calls_asyncio_wait_for() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in SOURCES
        for path in sorted(folder.rglob("*.py"))
        for line in _wait_for_calls(path)
    ]
    assert found == [], f"asyncio.wait_for loses cancellations on Python 3.11; use asyncio.timeout: {found}"
