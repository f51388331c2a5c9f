"""The page in a real browser: Debian's Chromium driven by Playwright, against the API on 127.0.0.1.

What a shopper does: pick a photo (its product comes first), type words (their product is in the first
three), click "more like this" (a new grid without that product), upload something that is not a photo (a
message, not a broken page). Catalogue text with markup shows as text. Every request the page makes goes to
127.0.0.1: the page works offline.

The search side is one fixture, :func:`site`: the real pipeline. A catalogue (thumbnails on a local image
server) is ingested by real workers through the installed command, and the API runs over the real backend
(queries through the broker: encoded on the embedding processes, searched on the store owner). The photo is a
re-encoded copy of a catalogue image; the words are a distinctive word of a product's name.

Playwright's own browser download cannot work here, so the test uses /usr/bin/chromium (``apt-get install -y
chromium``; .ci/run installs it). Without it the test is skipped on a developer machine and fails in CI.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lookalike.api import create_app
from lookalike.testing.server import ImageServer

from api_support import serving

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
# The README shows both screenshots. A test run writes them to one scratch directory (overwritten by the next run),
# so it never changes a tracked file; `LOOKALIKE_UPDATE_SCREENSHOTS=1 pytest tests/test_browser.py` writes them to
# docs/ for the README.
SCREENSHOTS = (
    Path(__file__).resolve().parents[1] / "docs"
    if os.environ.get("LOOKALIKE_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "lookalike-screenshots"
)
SCREENSHOT = SCREENSHOTS / "page.png"
PHONE_SCREENSHOT = SCREENSHOTS / "page-phone.png"
LONG_NAME = (
    "Brass desk lamp with an adjustable arm, a weighted base, a warm white bulb included, a fabric cord and a "
    "dimmer switch, for reading, drawing and working late"
)

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


PRODUCTS = [
    # id, name, category, price, image seed
    ("kettle", "Stainless electric kettle", "Home & Kitchen | Kettles", "$25.00", 11),
    ("teapot", "Porcelain teapot with infuser", "Home & Kitchen | Teapots", "$40.00", 12),
    ("jacket", "Blue denim jacket", "Clothing | Jackets", "$60.00", 13),
    ("scarf", '<b>Grey</b> wool scarf <img src=x onerror="window.pwned=1">', "Clothing | Scarves", "$15.00", 14),
    ("puzzle", "Jigsaw puzzle of a lighthouse", "Toys & Games | Puzzles", "$12.50", 15),
    ("drone", "Quadcopter drone with camera", "Toys & Games | Drones", "$99.00", 16),
    ("lamp", LONG_NAME, "Home & Kitchen | Lighting", "$35.00", 17),
    ("boots", "Leather hiking boots", "Clothing | Shoes", "$120.00", 18),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The real pipeline: real workers, the installed `lookalike ingest`, the API over the real backend."""
    import redis

    from lookalike.app.gateway import Gateway
    from lookalike.config.settings import get_settings, reset_settings
    from lookalike.state.context import reset_state
    from lookalike.testing import images
    from lookalike.testing.catalogs import catalog_row, write_catalog
    from lookalike.testing.server import Route
    from lookalike.worker import pipeline

    from conftest import BASE_ENV, REDIS_URL, WorkerProcess, run_cli

    scratch = tmp_path_factory.mktemp("browser")
    env = {**BASE_ENV, "LOOKALIKE_QDRANT_PATH": str(scratch / "qdrant")}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    reset_settings()
    pipeline.reset_context()
    reset_state()
    redis.Redis.from_url(REDIS_URL).flushdb()
    worker = None
    try:
        with ImageServer() as server:
            rows = [
                catalog_row(
                    pid,
                    name,
                    [server.add(f"/browser/{pid}.jpg", Route(body=images.product_bytes(seed * 53)))],
                    category=category,
                    price=price,
                )
                for pid, name, category, price, seed in PRODUCTS
            ]
            catalog = write_catalog(scratch / "catalog.csv", rows)
            worker = WorkerProcess(env)
            worker.wait_ready()
            ingested = run_cli(["ingest", str(catalog), "--wait"], env)
            assert ingested.code == 0, ingested.stderr
            settings = get_settings()
            with serving(create_app(Gateway(settings), settings)) as base_url:
                yield Site(
                    base_url=base_url,
                    photo=images.resized_copy(images.product_bytes(13 * 53), 0.8, fmt="JPEG", quality=80),
                    photo_product="jacket",
                    words="lighthouse",
                    words_product="puzzle",
                    markup_product="scarf",
                    markup_name=PRODUCTS[3][1],
                    markup_words="wool scarf",
                )
    finally:
        if worker is not None:
            worker.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_settings()
        pipeline.reset_context()
        reset_state()


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
    assert first.locator(".match").text_content() == "100% match", "its own photo: a full match, as a percentage"
    assert "score" not in (page.locator("#results").text_content() or ""), "no raw score for shoppers"
    assert page.locator("#notice").is_hidden()
    options = page.locator("#category option").all_text_contents()
    assert len(options) > 1, "the category control is filled from the facets"
    page.wait_for_function("() => [...document.images].every(image => image.complete)", timeout=10_000)
    SCREENSHOTS.mkdir(exist_ok=True)
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


def search_words(page: Page, words: str) -> None:
    before = grid_seq(page)
    page.locator("input[type=search]").fill(words)
    page.locator("input[type=search]").press("Enter")
    wait_for_new_grid(page, before)


def upload_photo(page: Page, photo: bytes) -> None:
    before = grid_seq(page)
    page.locator("input[type=file]").set_input_files(
        files=[{"name": "query.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    )
    wait_for_new_grid(page, before)


def prices(page: Page) -> list[float]:
    texts = page.locator("#results .price").all_text_contents()
    return [float(text.strip("$")) for text in texts]


def test_long_names_are_clamped_to_two_lines_with_the_whole_name_in_the_title(page: Page) -> None:
    search_words(page, "brass desk lamp")
    name = page.locator('#results [data-product-id="lamp"] .name')
    assert name.text_content() == LONG_NAME and name.get_attribute("title") == LONG_NAME
    box = name.evaluate(
        "el => ({shown: el.clientHeight, full: el.scrollHeight, line: parseFloat(getComputedStyle(el).lineHeight)})"
    )
    assert box["full"] > box["shown"], "the name is longer than what the card shows"
    assert box["shown"] <= 2 * box["line"] + 1, f"at most two lines: {box}"
    heights = page.locator("#results .card").evaluate_all("cards => cards.map(c => c.getBoundingClientRect().height)")
    assert max(heights) - min(heights) < 2, f"every card the same height: {heights}"


def test_a_photo_clears_the_words_and_filters_re_run_what_the_page_shows(page: Page, site: Site) -> None:
    # Words submitted, then other words typed but not submitted: a filter change searches what the box shows.
    search_words(page, site.words)
    assert card_ids(page)[0] == site.words_product
    page.locator("input[type=search]").fill("kettle")
    before = grid_seq(page)
    page.locator("#max-price").fill("30")
    page.locator("#max-price").dispatch_event("change")
    wait_for_new_grid(page, before)
    assert card_ids(page)[0] == "kettle" and all(price <= 30 for price in prices(page)), card_ids(page)

    # A photo replaces the words; a filter change then re-runs the photo, not the words it replaced.
    upload_photo(page, site.photo)
    assert page.locator("input[type=search]").input_value() == ""
    before = grid_seq(page)
    page.locator("#max-price").fill("")
    page.locator("#max-price").dispatch_event("change")
    wait_for_new_grid(page, before)
    assert card_ids(page)[0] == site.photo_product, "the photo, searched again without the price limit"


def test_a_file_that_is_not_a_photo_leaves_no_broken_image(page: Page, site: Site) -> None:
    upload_photo(page, site.photo)
    assert page.locator("#query-photo").is_visible()
    page.locator("input[type=file]").set_input_files(
        files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"certainly not a jpeg"}]
    )
    page.wait_for_function("() => document.body.dataset.state === 'error'", timeout=20_000)
    assert page.locator("#error").is_visible()
    assert page.locator("#query-photo").is_hidden()
    broken = page.evaluate(
        "() => [...document.images].filter(i => i.checkVisibility() && i.complete && !i.naturalWidth).length"
    )
    assert broken == 0


def test_the_mode_choice_and_a_weak_match_are_shown(page: Page, site: Site) -> None:
    sent: list[dict[str, object]] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/search") else None)
    page.locator("#mode").select_option("keyword")
    search_words(page, site.words)
    assert sent[-1]["mode"] == "keyword"
    assert card_ids(page) == [site.words_product]
    assert page.locator("#results .match").first.get_attribute("title") == "matched by keyword"
    assert page.locator("#notice").is_hidden()

    # Words that match nothing well: the nearest products, and the page says they are not close.
    before = grid_seq(page)
    page.locator("#mode").select_option("hybrid")  # a mode change re-runs the words in the box
    wait_for_new_grid(page, before)
    assert sent[-1] == {**sent[-2], "mode": "hybrid"}
    search_words(page, "zyxwv qwertz")
    assert card_ids(page), "hybrid mode still ranks the nearest products"
    assert page.locator("#notice").is_visible()
    assert "No close match" in (page.locator("#notice").text_content() or "")


def test_the_category_control_is_a_tree_of_the_matches_and_filters_by_a_path(page: Page, site: Site) -> None:
    search_words(page, "puzzle drone")  # two products hold one of the words
    options = page.locator("#category option").evaluate_all(
        "os => os.slice(1).map(o => [o.value, Number(o.dataset.depth), o.textContent.trim()])"
    )
    assert ["Toys & Games", 0, "Toys & Games (2)"] in options, options
    assert ["Toys & Games | Puzzles", 1, "Puzzles (1)"] in options
    assert ["Toys & Games | Drones", 1, "Drones (1)"] in options
    before = grid_seq(page)
    page.locator("#category").select_option("Toys & Games | Puzzles")
    wait_for_new_grid(page, before)
    assert card_ids(page) == ["puzzle"]
    assert page.locator("#category").input_value() == "Toys & Games | Puzzles", "the choice stays"


def test_the_favicon_is_served(site: Site) -> None:
    import httpx

    response = httpx.get(site.base_url + "/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00", "an ICO file"


def test_the_page_on_a_phone_390_pixels_wide(browser: Browser, site: Site) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(site.base_url + "/")
        upload_photo(page, site.photo)
        assert card_ids(page)[0] == site.photo_product
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"nothing wider than the screen: {width}px"
        page.wait_for_function("() => [...document.images].every(image => image.complete)", timeout=10_000)
        page.screenshot(path=str(PHONE_SCREENSHOT))
    finally:
        context.close()
