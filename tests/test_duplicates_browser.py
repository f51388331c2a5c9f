"""The page's "Duplicates" view in a real browser (Debian's Chromium driven by Playwright), against the API on
127.0.0.1 over a real Redis: groups side by side with their thumbnails, and the two decision buttons.

The pairs and the registry are written to Redis directly (the detection itself is covered end to end in
test_duplicates.py); the thumbnails come from a local image server. Skipped without /usr/bin/chromium on a
developer machine, like test_browser.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lookalike.api import create_app
from lookalike.config.settings import get_settings
from lookalike.producer.product import point_id_for
from lookalike.state.context import StateContext
from lookalike.state.duplicates import ImagePair
from lookalike.state.registry import ProductState
from lookalike.testing.images import product_bytes
from lookalike.testing.server import ImageServer, Route

from api_support import FakeBackend, serving

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run must install Debian's chromium", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402

MARKUP = '<b>Teapot</b> <img src=x onerror="window.pwned=1">'


@pytest.fixture
def site(env: dict[str, str], image_server: ImageServer) -> Iterator[str]:
    ctx = StateContext()
    listings = [("teapot-a", MARKUP, 1), ("teapot-b", "Teapot (seller B)", 1), ("lamp-a", "Lamp", 2),
                ("lamp-b", "Lamp, relisted", 2)]  # fmt: skip
    urls = {}
    for product, name, photo in listings:
        urls[product] = image_server.add(f"/thumbs/{product}.jpg", Route(body=product_bytes(photo)))
        payload = {"name": name, "price": "$30.00", "product_url": f"http://127.0.0.1:9/{product}"}
        ctx.registry.apply(product, ProductState(1, False, payload, (urls[product],)))

    def pair(a: str, b: str, score: float) -> ImagePair:
        return ImagePair.of(point_id_for(a, urls[a]), a, urls[a], point_id_for(b, urls[b]), b, urls[b], score)

    ctx.duplicates.replace({}, [pair("teapot-a", "teapot-b", 0.999), pair("lamp-a", "lamp-b", 0.98)])
    settings = get_settings()
    with serving(create_app(FakeBackend(), settings)) as base_url:
        yield base_url


@pytest.fixture
def page(site: str) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"], headless=True
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(site + "/")
        yield page
        browser.close()


def groups_shown(page: Page) -> list[list[str]]:
    result: Any = page.locator("#dup-groups .group").evaluate_all(
        "groups => groups.map(g => [...g.querySelectorAll('[data-product-id]')].map(c => c.dataset.productId))"
    )
    return list(result)


def wait_for_groups(page: Page, previous: str) -> None:
    page.wait_for_function(
        "previous => document.querySelector('#dup-groups').dataset.seq !== previous", arg=previous, timeout=20_000
    )


def test_the_duplicates_view_shows_groups_side_by_side_and_a_decision_removes_one(page: Page) -> None:
    page.locator("#view-duplicates").click()
    wait_for_groups(page, "0")
    assert page.locator("#duplicates").is_visible() and not page.locator("#search-view").is_visible()
    assert groups_shown(page) == [["teapot-a", "teapot-b"], ["lamp-a", "lamp-b"]]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#dup-groups img')].every(image => image.complete && image.naturalWidth)"
    )  # the thumbnails loaded
    assert "2 groups" in (page.locator("#dup-status").text_content() or "")
    # Catalogue text with markup is shown as text.
    name = page.locator('#dup-groups [data-product-id="teapot-a"] .name')
    assert name.text_content() == MARKUP and name.locator("*").count() == 0
    assert page.evaluate("() => window.pwned") is None

    seq = str(page.locator("#dup-groups").get_attribute("data-seq"))
    page.locator('#dup-groups .pair[data-a="lamp-a"] button.distinct').click()
    wait_for_groups(page, seq)
    assert groups_shown(page) == [["teapot-a", "teapot-b"]]
    assert StateContext().duplicates.decisions()[("lamp-a", "lamp-b")].decision == "distinct"

    seq = str(page.locator("#dup-groups").get_attribute("data-seq"))
    page.locator('#dup-groups .pair[data-a="teapot-a"] button.same').click()
    wait_for_groups(page, seq)
    assert groups_shown(page) == [["teapot-a", "teapot-b"]]
    assert StateContext().duplicates.decisions()[("teapot-a", "teapot-b")].decision == "same"
    assert page.locator('#dup-groups .pair[data-a="teapot-a"] button.same').is_disabled()
