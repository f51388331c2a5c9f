"""The page in a real browser: Debian's Chromium driven by Playwright, against the API on 127.0.0.1.

What a shopper does: pick a photo (its product comes first), type words (their product is in the first
three), click "more like this" (a new grid without that product), upload something that is not a photo (a
message, not a broken page). Catalogue text with markup shows as text. Every request the page makes goes to
127.0.0.1: the page works offline.

The search side is one fixture, :func:`site`: today the fake backend over a tiny catalogue with thumbnails
on a local image server; the same test runs against the real pipeline by swapping that fixture for one that
ingests a catalogue with real workers and returns the same :class:`Site`.

Playwright's own browser download cannot work here, so the test uses /usr/bin/chromium (``apt-get install -y
chromium``; .ci/run installs it). Without it the test is skipped on a developer machine and fails in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lookalike.api import create_app
from lookalike.config.settings import Settings
from lookalike.testing.server import ImageServer

from api_support import BY_ID, FakeBackend, catalogue_images, photo_of, serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "page.png"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run must install Debian's chromium", pytrace=False)
    pytest.skip(
        f"{CHROMIUM} is not installed (apt-get install -y chromium); CI installs it and runs this test",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402


@dataclass(frozen=True)
class Site:
    """A running API with a catalogue behind it, and what the test may expect of that catalogue."""

    base_url: str
    photo: bytes  # a photo of ...
    photo_product: str  # ... this product, which must come first
    words: str  # words naming ...
    words_product: str  # ... this product, which must be in the first three
    markup_product: str | None = None  # a product whose name holds HTML markup (None: not in this catalogue)
    markup_name: str | None = None  # its name exactly as in the catalogue
    markup_words: str | None = None  # words that find it


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """THE place to swap the backend: the fake one here; the real pipeline yields the same Site."""
    backend = FakeBackend()
    with ImageServer() as images:
        catalogue_images(images, backend)
        with serving(create_app(backend, Settings())) as base_url:
            yield Site(
                base_url=base_url,
                photo=photo_of("p-orange-kettle"),
                photo_product="p-orange-kettle",
                words="blue denim jacket",
                words_product="p-blue-jacket",
                markup_product="p-grey-scarf",
                markup_name=BY_ID["p-grey-scarf"].name,
                markup_words="scarf",
            )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    outside: list[str] = []

    def only_loopback(route, request) -> None:  # type: ignore[no-untyped-def]
        if urlsplit(request.url).hostname == "127.0.0.1" or request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(site.base_url + "/")
    yield page
    context.close()
    assert outside == [], f"the page asked for something outside 127.0.0.1: {outside}"


def card_ids(page: Page) -> list[str]:
    return page.locator("#results [data-product-id]").evaluate_all("cards => cards.map(c => c.dataset.productId)")


def wait_for_new_grid(page: Page, previous: str) -> None:
    page.wait_for_function(
        "previous => document.querySelector('#results').dataset.seq !== previous"
        " || document.body.dataset.state === 'error'",
        arg=previous,
        timeout=20_000,
    )


def grid_seq(page: Page) -> str:
    return str(page.locator("#results").get_attribute("data-seq"))


def test_the_dom_contract_holds(page: Page) -> None:
    assert page.locator("input[type=file]").count() == 1
    assert page.locator("input[type=search]").count() == 1


def test_photo_words_and_more_like_this(page: Page, site: Site) -> None:
    # A photo: choosing the file searches at once; its product comes first, and the photo is shown.
    before = grid_seq(page)
    page.locator("input[type=file]").set_input_files(
        files=[{"name": "query.jpg", "mimeType": "image/jpeg", "buffer": site.photo}]
    )
    wait_for_new_grid(page, before)
    assert page.locator("body").get_attribute("data-state") == "ready", page.locator("#error").text_content()
    assert card_ids(page)[0] == site.photo_product
    assert page.locator("#query-photo").is_visible()
    first = page.locator("#results [data-product-id]").first
    assert first.locator("a.name").get_attribute("href", timeout=1000)
    assert first.locator(".score").text_content()
    options = page.locator("#category option").all_text_contents()
    assert len(options) > 1, "the category control is filled from the facets"
    page.wait_for_function("() => [...document.images].every(image => image.complete)", timeout=10_000)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # Words: Enter searches; their product is in the first three.
    before = grid_seq(page)
    page.locator("input[type=search]").fill(site.words)
    page.locator("input[type=search]").press("Enter")
    wait_for_new_grid(page, before)
    assert site.words_product in card_ids(page)[:3]

    # More like this: a new grid, without that product.
    clicked = card_ids(page)[0]
    before = grid_seq(page)
    page.locator(f'#results [data-product-id="{clicked}"] button.more').click()
    wait_for_new_grid(page, before)
    assert page.locator("body").get_attribute("data-state") == "ready"
    after = card_ids(page)
    assert after and clicked not in after


def test_a_file_that_is_not_a_photo_shows_a_message(page: Page) -> None:
    before = grid_seq(page)
    page.locator("input[type=file]").set_input_files(
        files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"certainly not a jpeg"}]
    )
    page.wait_for_function("() => document.body.dataset.state === 'error'", timeout=20_000)
    assert grid_seq(page) == before
    error = page.locator("#error")
    assert error.is_visible()
    assert "not_an_image" in (error.text_content() or "")


def test_catalogue_text_with_markup_is_shown_as_text(page: Page, site: Site) -> None:
    if site.markup_product is None or site.markup_words is None or site.markup_name is None:
        pytest.skip("this catalogue has no product with markup in its name")
    before = grid_seq(page)
    page.locator("input[type=search]").fill(site.markup_words)
    page.locator("input[type=search]").press("Enter")
    wait_for_new_grid(page, before)
    card = page.locator(f'#results [data-product-id="{site.markup_product}"]')
    name = card.locator(".name")
    assert name.text_content() == site.markup_name
    assert name.locator("*").count() == 0  # no element came out of the text
    assert page.evaluate("() => window.pwned") is None
