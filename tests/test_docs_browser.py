"""The API's docs page still works in a real browser under its Content-Security-Policy (Chromium at
/usr/bin/chromium, as tests/test_browser.py; skipped on a developer machine without it, failed in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_serve import Serving

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run must install Debian's chromium", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402


def test_the_docs_page_renders_under_its_policy_with_no_violation(env: dict[str, str], tmp_path: Path) -> None:
    serving = Serving(env, tmp_path / "serve.log")
    messages: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.on("console", lambda message: messages.append(message.text))
            page.goto(serving.base + "/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            assert "lookalike" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)  # the operations, from /openapi.json
            browser.close()
    finally:
        serving.stop()
    assert not [m for m in messages if "Content Security Policy" in m or "Refused to" in m], messages
