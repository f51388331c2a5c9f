"""Settings that cannot work are refused when they load, in one line that names the variable.

A malformed broker URL used to surface deep inside redis-py, urllib or kombu as a 45-62 line traceback (or, for
a database that is not a number, not at all: redis-py read it as database 0 while kombu refused it).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lookalike.config.settings import Settings, broker_url_problem, settings_error_line

from conftest import run_cli

MALFORMED = {
    "empty": ("", "is empty"),
    "no scheme": ("127.0.0.1:6379", "has no scheme"),
    "http": ("http://127.0.0.1:6379/0", "has the scheme 'http://'"),
    "unix socket": ("unix:///run/redis.sock", "has the scheme 'unix://'"),
    "no host": ("redis://:6379/0", "has no host"),
    "port not a number": ("redis://127.0.0.1:abc/0", "has a port that is not a number"),
    "port out of range": ("redis://127.0.0.1:70000/0", "has a port that is not a number from 1 to 65535"),
    "database not a number": ("redis://127.0.0.1:6379/x", "has a database that is not a number: 'x'"),
    "database query not a number": ("redis://127.0.0.1:6379?db=one", "has a database that is not a number"),
}


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://redis:6379",
        "redis://:p%40ss@redis:6379/15",
        "redis://user:pass@[::1]:6380/2",
        "rediss://cache.example.com:6380/0?ssl_cert_reqs=required",
    ],
)
def test_usable_broker_urls_are_accepted(url: str) -> None:
    assert broker_url_problem(url) is None


@pytest.mark.parametrize(("url", "problem"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_broker_url_is_refused_when_the_settings_load(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    monkeypatch.setenv("LOOKALIKE_BROKER_URL", url)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    line = settings_error_line(excinfo.value)
    assert line.startswith("LOOKALIKE_BROKER_URL ") and problem in line, line
    assert "\n" not in line


def test_the_error_line_never_shows_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_BROKER_URL", "redis://:hunter2-secret@127.0.0.1:port/0")
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    line = settings_error_line(excinfo.value)
    assert "port" in line and "hunter2" not in line, line


def test_other_settings_errors_are_one_line_naming_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_API_PORT", "eighty")
    monkeypatch.setenv("LOOKALIKE_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    line = settings_error_line(excinfo.value)
    assert "LOOKALIKE_API_PORT: " in line and "LOOKALIKE_LOG_FORMAT: " in line and "\n" not in line
    assert "eighty" not in line


@pytest.mark.parametrize(("url", "problem"), MALFORMED.values(), ids=MALFORMED.keys())
def test_the_command_says_what_is_wrong_with_the_broker_url_in_one_line(
    env: dict[str, str], url: str, problem: str
) -> None:
    result = run_cli(["status"], {**env, "LOOKALIKE_BROKER_URL": url}, timeout=60)
    assert result.code == 2, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("error: LOOKALIKE_BROKER_URL ") and problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_database_the_broker_does_not_have_is_not_blamed_on_the_password(env: dict[str, str]) -> None:
    url = env["LOOKALIKE_BROKER_URL"].rpartition("/")[0] + "/9999"  # Redis has databases 0-15 unless configured
    result = run_cli(["status"], {**env, "LOOKALIKE_BROKER_URL": url}, timeout=60)
    assert result.code == 2, result.stderr
    assert result.stderr.strip() == (
        "error: the broker refused the connection (DB index is out of range); "
        "check the database number in LOOKALIKE_BROKER_URL"
    ), result.stderr
