"""What every CLI is expected to have, from the venv's entry points: `--version`, shell completion generated from
the parsers, and logs as readable text on a terminal and JSON elsewhere (`JOBSD_LOG_FORMAT` chooses)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import pty
from pathlib import Path

from .cli_processes import JOBSCTL, JOBSD, START, environment, run

COMPLETE = """
source <("$1" completion bash)
complete_words() {{
  COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); {function}; echo "${{COMPREPLY[*]}}"
}}
"""


async def test_both_clis_print_their_version() -> None:
    code, out, _ = await run(JOBSD, "--version")
    assert (code, out) == (0, f"jobsd {importlib.metadata.version('jobsd')}\n")
    code, out, _ = await run(JOBSCTL, "--version")
    assert (code, out) == (0, f"jobsctl {importlib.metadata.version('jobsd-client')} (jobsd-client)\n")


async def complete(program: str, function: str, *words: str) -> list[str]:
    script = COMPLETE.format(function=function) + 'complete_words "${@:2}"\n'
    code, out, err = await run("bash", "-c", script, "bash", program, Path(program).name, *words)
    assert code == 0, err
    return out.split()


async def test_bash_completion_knows_commands_options_and_choices() -> None:
    code, script, _ = await run(JOBSCTL, "completion", "bash")
    assert code == 0 and "complete -o default -F _jobsctl_complete jobsctl" in script
    code, _, err = await run("bash", "-n", "-c", script)
    assert code == 0, err

    ctl = "_jobsctl_complete"
    assert await complete(JOBSCTL, ctl, "da") == ["datasource"]
    connection = ["--target", "--http-target", "--token", "--workspace", "--json", "--timeout"]
    assert await complete(JOBSCTL, ctl, "datasource", "") == ["create", "ls", "show", "-h", "--help", *connection]
    # An option's value is not taken for a command; a choice completes from the option's choices.
    assert await complete(JOBSCTL, ctl, "--target", "ls", "ls", "--sta") == ["--status"]
    assert await complete(JOBSCTL, ctl, "ls", "--status", "c") == ["cancelling", "cancelled"]
    assert await complete(JOBSCTL, ctl, "completion", "") == ["-h", "--help", "bash", "zsh"]

    assert "--kind-limits" in await complete(JOBSD, "_jobsd_complete", "serve", "--kind")
    assert await complete(JOBSD, "_jobsd_complete", "token", "create", "--create-w") == ["--create-workspace"]


async def test_zsh_completion_is_the_bash_script_through_bashcompinit() -> None:
    # (No zsh on the test machines: the script is checked as text and by bash, which runs the same function.)
    code, zsh, _ = await run(JOBSD, "completion", "zsh")
    _, bash, _ = await run(JOBSD, "completion", "bash")
    assert code == 0
    assert zsh.splitlines()[1] == "autoload -U +X bashcompinit && bashcompinit"
    assert zsh.splitlines()[2:] == bash.splitlines()[1:]


async def serve_until_it_logs(tmp_path: Path, env: dict[str, str], *, terminal: bool) -> str:
    """`jobsd serve` (no REST) until its first log line (the executors saying where their data plane is): that
    line, as stderr carried it."""
    settings = {
        "JOBSD_STORE": f"sqlite:///{tmp_path}/jobsd.db",
        "JOBSD_GRPC_ADDR": "127.0.0.1:0",
        "JOBSD_HTTP_ADDR": "",
        **env,
    }
    primary, secondary = pty.openpty() if terminal else os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            JOBSD,
            "serve",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=secondary,
            stdin=asyncio.subprocess.DEVNULL,
            env=environment(settings),
        )
    finally:
        os.close(secondary)
    try:
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(primary, "rb", buffering=0)
        )
        try:
            async with asyncio.timeout(START):
                line = await reader.readline()
        finally:
            transport.close()
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
    return line.decode().rstrip("\r\n")


async def test_logs_are_text_on_a_terminal_and_json_elsewhere(tmp_path: Path) -> None:
    on_terminal = await serve_until_it_logs(tmp_path, {}, terminal=True)
    assert not on_terminal.startswith("{") and " INFO    jobsd." in on_terminal, on_terminal

    piped = json.loads(await serve_until_it_logs(tmp_path, {}, terminal=False))
    assert piped["level"] == "info" and piped["logger"].startswith("jobsd")

    forced_json = await serve_until_it_logs(tmp_path, {"JOBSD_LOG_FORMAT": "json"}, terminal=True)
    assert json.loads(forced_json)["msg"].startswith("executors running against 127.0.0.1:")
    forced_text = await serve_until_it_logs(tmp_path, {"JOBSD_LOG_FORMAT": "text"}, terminal=False)
    assert f" INFO    {piped['logger']}: executors running against 127.0.0.1:" in forced_text
