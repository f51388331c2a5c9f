"""The README and --help say what the code does: every setting, command and metric is documented."""

from __future__ import annotations

import re
from pathlib import Path

from lookalike.config.settings import Settings
from lookalike.worker import metrics

from conftest import run_cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMANDS = ("ingest", "worker", "search", "status", "failures", "listen", "events", "flower", "metrics")


def test_every_setting_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"^\| `(LOOKALIKE_[A-Z_]+)` \|", README, re.MULTILINE))
    assert documented == {f"LOOKALIKE_{name.upper()}" for name in Settings.model_fields}


def test_every_metric_is_in_the_readme() -> None:
    names = set(re.findall(r"^(lookalike_\w+)", metrics.__doc__ or "", re.MULTILINE))
    in_readme = set(re.findall(r"^\| `(lookalike_\w+)", README, re.MULTILINE))
    assert names == in_readme


def test_every_command_has_help_and_is_in_the_readme(env) -> None:
    top = run_cli(["--help"], env)
    assert top.code == 0
    for command in COMMANDS:
        assert command in top.stdout
        assert f"`lookalike {command}" in README
        assert run_cli([command, "--help"], env).code == 0


def test_version() -> None:
    from lookalike import __version__

    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
