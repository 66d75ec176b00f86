"""The settings as people read them: the README's table and `jobsd serve --help` both come from the Settings
fields (variable, flag, default, meaning), so neither can drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobsd.errors import InvalidArgument
from jobsd.settings import SETTINGS, Setting, Settings, settings_from

README = Path(__file__).resolve().parents[2] / "README.md"
_ROW = re.compile(r"^\| `(JOBSD_[A-Z_]+)` \| `(--[a-z-]+)` \| (.*?) \| (.*) \|$")


def readme_row(setting: Setting) -> str:
    """The README's row for a setting: plain defaults in backticks, descriptions of a default as they are."""
    default = setting.default_text
    if setting.shown is None and default != "none":
        default = f"`{default}`"
    return f"| `{setting.env}` | `{setting.flag}` | {default} | {setting.meaning} |"


def test_the_readme_settings_table_is_the_settings_object() -> None:
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if _ROW.match(line)]
    expected = [readme_row(setting) for setting in SETTINGS]
    assert rows == expected, "the README's settings table should read:\n" + "\n".join(expected)


def test_every_field_of_settings_is_a_documented_setting() -> None:
    documented = {setting.name for setting in SETTINGS}
    fields = {name for name in Settings.__dataclass_fields__ if name != "kind_registry"}
    assert documented == fields
    assert all(setting.meaning and setting.env.startswith("JOBSD_") for setting in SETTINGS)
    assert len({setting.flag for setting in SETTINGS}) == len(SETTINGS)


def test_serve_help_lists_every_setting_with_its_variable_default_and_meaning() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobsd.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Each option's entry: its line and the indented lines of help below it, as one line.
    entries: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith("  --"):
            flag = line.split()[0]
            entries[flag] = line
        elif line.startswith("    ") and entries:
            entries[flag] += " " + line.strip()
    for setting in SETTINGS:
        assert setting.flag in entries, f"{setting.flag} is not in `jobsd serve --help`"
        text = " ".join(entries[setting.flag].split())
        assert f"{setting.meaning} [{setting.env}; default: {setting.default_text}]" in text, text


def test_a_flag_is_named_after_its_variable_and_the_old_spelling_still_works() -> None:
    assert next(s for s in SETTINGS if s.env == "JOBSD_CONCURRENCY_LIMITS").flag == "--concurrency-limits"
    flags = {"kind_limits": "import=7"}
    assert settings_from({}, flags).kind_registry.limit_for("import") == 7
    result = subprocess.run(
        [sys.executable, "-m", "jobsd.cli", "serve", "--kind-limits", "import=x", "--grpc-addr", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: --concurrency-limits (import): expected a whole number, got 'x'\n"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"JOBSD_LEASE_SECONDS": "soon"}, "JOBSD_LEASE_SECONDS: expected a number, got 'soon'"),
        ({"JOBSD_MAX_ATTEMPTS": "0"}, "JOBSD_MAX_ATTEMPTS: must be at least 1, got '0'"),
        ({"JOBSD_EXECUTORS": "maybe"}, "JOBSD_EXECUTORS: expected on/off, got 'maybe'"),
        ({"JOBSD_LOG_FORMAT": "xml"}, "JOBSD_LOG_FORMAT: expected one of text, json, got 'xml'"),
        ({"JOBSD_LOG_LEVEL": "loud"}, "JOBSD_LOG_LEVEL: expected one of debug, info, warning, error, critical"),
        ({"JOBSD_CONCURRENCY_LIMITS": "import"}, "JOBSD_CONCURRENCY_LIMITS: expected kind=N[,kind=N...], got"),
        ({"JOBSD_TIME_LIMITS": "imprt=5"}, "JOBSD_TIME_LIMITS: unknown kind 'imprt'; declared kinds: copy"),
    ],
)
def test_a_bad_setting_is_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        settings_from(environ)
    assert str(info.value).startswith(message)
