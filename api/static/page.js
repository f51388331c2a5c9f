// The lookalike search page: plain JavaScript, no build step, no third-party code, nothing from a CDN.
//
// Catalogue text (names, prices, categories) comes from the catalogue, not from us: it is only ever put in the
// page with textContent and attributes, never parsed as HTML. Links and thumbnails are used only when they
// are http(s) URLs; thumbnails are the catalogue's own image URLs (this server never proxies them).
"use strict";

(() => {
  const K = 12;
  const KEY_STORAGE = "lookalike-api-key";
  const MESSAGES = {
    not_an_image: "That file is not an image this search can read.",
    truncated: "That image file is cut short.",
    too_many_pixels: "That image is too big to decode.",
    too_large: "That photo is too large to upload.",
    empty: "That file is empty.",
    corrupt_header: "That image file is damaged.",
    decode_error: "That image could not be decoded.",
    unknown_product: "That product is no longer in the catalogue.",
    unavailable: "Search is unavailable right now; please try again in a moment.",
    timeout: "Search took too long; please try again.",
    not_ready: "Search is starting; please try again in a moment.",
    missing_api_key: "This server needs an API key: enter it above.",
    bad_api_key: "That API key was refused: check it above.",
    bad_filter: "Check the price range.",
    bad_text: "Type fewer words (at most 1000 characters).",
    network: "The server could not be reached.",
  };

  const $ = (id) => document.getElementById(id);
  const els = {
    body: document.body,
    drop: $("drop"),
    photo: $("photo"),
    queryPhoto: $("query-photo"),
    wordsForm: $("words-form"),
    words: $("words"),
    mode: $("mode"),
    category: $("category"),
    minPrice: $("min-price"),
    maxPrice: $("max-price"),
    keyForm: $("key-form"),
    apiKey: $("api-key"),
    status: $("status"),
    notice: $("notice"),
    error: $("error"),
    results: $("results"),
  };

  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
  let lastQuery = null;
  let sequence = 0; // answers to older requests are dropped
  let photoUrl = null;

  const { ApiError, callApi, safeUrl, productCard } = window.lookalikeCards;

  function currentFilters() {
    const filters = {};
    if (els.category.value) filters.category = els.category.value;
    const min = els.minPrice.value.trim();
    const max = els.maxPrice.value.trim();
    if (min !== "") filters.min_price = Number(min);
    if (max !== "") filters.max_price = Number(max);
    return filters;
  }

  function call(method, url, body) {
    return callApi(method, url, body, { apiKey, onUnauthorized: () => (els.keyForm.hidden = false) });
  }

  function request(query) {
    const filters = currentFilters();
    if (query.kind === "photo") {
      const form = new FormData();
      form.append("image", query.file, query.file.name || "photo");
      form.append("k", String(K));
      form.append("facets", "true");
      for (const [name, value] of Object.entries(filters)) form.append(name, String(value));
      return call("POST", "/v1/search", form);
    }
    if (query.kind === "words") {
      const body = { text: query.text, mode: query.mode, k: K, facets: true };
      if (Object.keys(filters).length) body.filters = filters;
      return call("POST", "/v1/search", body);
    }
    const params = new URLSearchParams({ k: String(K) });
    for (const [name, value] of Object.entries(filters)) params.set(name, String(value));
    return call("GET", `/v1/products/${encodeURIComponent(query.product.product_id)}/similar?${params}`);
  }

  function hideQueryPhoto() {
    els.queryPhoto.hidden = true;
    els.queryPhoto.removeAttribute("src");
  }

  // The photo searched with is shown once it has loaded: a file that is no image never shows a broken icon.
  function showQuery(query) {
    let source = null;
    if (query.kind === "photo") {
      if (photoUrl) URL.revokeObjectURL(photoUrl);
      photoUrl = URL.createObjectURL(query.file);
      source = photoUrl;
    } else if (query.kind === "similar") {
      source = safeUrl(query.product.image_url);
    }
    if (!source) {
      hideQueryPhoto();
      return;
    }
    if (els.queryPhoto.getAttribute("src") === source) return;
    els.queryPhoto.hidden = true;
    els.queryPhoto.onload = () => {
      els.queryPhoto.hidden = false;
    };
    els.queryPhoto.onerror = hideQueryPhoto;
    els.queryPhoto.src = source;
  }

  function describe(query) {
    if (query.kind === "photo") return "your photo";
    if (query.kind === "words") return `“${query.text}”`;
    return `more like “${query.product.name || query.product.product_id}”`;
  }

  // What the page shows as the query: the words in the box if there are any, else the photo or product
  // searched last. A filter or mode change re-runs this, never a query the page no longer shows.
  function shownQuery() {
    const text = els.words.value.trim();
    if (text) return { kind: "words", text, mode: els.mode.value };
    if (lastQuery && lastQuery.kind !== "words") return lastQuery;
    return null;
  }

  function showNotice(text) {
    els.notice.textContent = text || "";
    els.notice.hidden = !text;
  }

  async function run(query) {
    lastQuery = query;
    const mine = ++sequence;
    showQuery(query);
    els.error.hidden = true;
    showNotice("");
    els.body.dataset.state = "loading";
    els.results.setAttribute("aria-busy", "true");
    els.status.textContent = `Searching for ${describe(query)}…`;
    try {
      const data = await request(query);
      if (mine !== sequence) return;
      if (data.facets) updateCategories(data.facets);
      const results = data.results || [];
      render(results);
      const count = results.length;
      els.status.textContent = count
        ? `${count} product${count === 1 ? "" : "s"} for ${describe(query)} in ${Math.round(data.took_ms)} ms`
        : `No products match ${describe(query)}.`;
      const notices = [];
      if (typeof data.note === "string" && data.note) notices.push(`Note: ${data.note}.`);
      if (count && data.no_close_match) {
        notices.push("No close match: these are only the nearest products in the catalogue.");
      }
      showNotice(notices.join(" "));
      els.body.dataset.closeMatch = count && !data.no_close_match ? "yes" : "no";
      els.body.dataset.state = "ready";
    } catch (error) {
      if (mine !== sequence) return;
      showError(error);
    } finally {
      if (mine === sequence) els.results.removeAttribute("aria-busy");
    }
  }

  function showError(error) {
    if (lastQuery && lastQuery.kind === "photo") hideQueryPhoto();
    const reason = error instanceof ApiError ? error.reason : "error";
    const friendly = MESSAGES[reason] || (error && error.detail) || "Something went wrong.";
    els.error.textContent = `${friendly} (${reason})`;
    els.error.title = (error && error.detail) || "";
    els.error.hidden = false;
    els.status.textContent = "";
    els.body.dataset.state = "error";
  }

  // Facets are counts keyed by category path ("A", "A | B", ...): shown as a tree, each path under its
  // parent, indented, most products first. The option's value is the full path, which the filter accepts.
  function updateCategories(facets) {
    const chosen = els.category.value;
    const children = new Map();
    for (const path of Object.keys(facets)) {
      const cut = path.lastIndexOf(" | ");
      const parent = cut < 0 ? "" : path.slice(0, cut);
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(path);
    }
    const paths = [];
    const walk = (parent, depth) => {
      const below = (children.get(parent) || []).sort((a, b) => facets[b] - facets[a] || a.localeCompare(b));
      for (const path of below) {
        paths.push([path, depth]);
        walk(path, depth + 1);
      }
    };
    walk("", 0);
    while (els.category.options.length > 1) els.category.remove(1);
    for (const [path, depth] of paths) {
      const option = document.createElement("option");
      option.value = path;
      option.dataset.depth = String(depth);
      const cut = path.lastIndexOf(" | ");
      const level = cut < 0 ? path : path.slice(cut + 3);
      option.textContent = `${"\u00a0\u00a0\u00a0".repeat(depth)}${level} (${facets[path]})`;
      els.category.append(option);
    }
    if (chosen && !(chosen in facets)) {
      const option = document.createElement("option");
      option.value = chosen;
      option.textContent = chosen;
      els.category.append(option);
    }
    els.category.value = chosen;
  }

  function card(hit) {
    const { article, body } = productCard(hit);
    const meta = document.createElement("div");
    meta.className = "meta";
    const price = document.createElement("span");
    price.className = "price";
    price.textContent = hit.price || "";
    // The match value (0-1, the same meaning for a photo, words or "more like this"); never the raw score.
    const match = document.createElement("span");
    match.className = "match";
    const percent = Math.round(Math.max(0, Math.min(1, Number(hit.match) || 0)) * 100);
    match.title = `matched by ${(hit.matched || []).join(", ") || "image"}`;
    match.textContent = `${percent}% match`;
    meta.append(price, match);
    const category = document.createElement("span");
    category.className = "category";
    category.textContent = hit.category || "";
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = "More like this";
    more.addEventListener("click", () => {
      els.words.value = "";
      run({ kind: "similar", product: hit });
    });
    body.append(meta, category, more);
    return article;
  }

  function render(results) {
    els.results.replaceChildren(...results.map(card));
    els.results.dataset.seq = String(Number(els.results.dataset.seq || "0") + 1);
  }

  // A photo or "more like this" replaces the words: the box never shows words that are not the query.
  function searchPhoto(file) {
    if (!file) return;
    els.words.value = "";
    run({ kind: "photo", file });
  }

  // ------------------------------------------------------------------------------------------- wiring
  els.photo.addEventListener("change", () => {
    const file = els.photo.files && els.photo.files[0];
    searchPhoto(file);
    els.photo.value = ""; // choosing the same file again searches again
  });

  els.wordsForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = els.words.value.trim();
    if (text) run({ kind: "words", text, mode: els.mode.value });
  });

  for (const name of ["dragenter", "dragover"]) {
    els.drop.addEventListener(name, (event) => {
      event.preventDefault();
      els.drop.classList.add("over");
    });
  }
  els.drop.addEventListener("dragleave", () => els.drop.classList.remove("over"));
  els.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    els.drop.classList.remove("over");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) searchPhoto(files[0]);
  });

  document.addEventListener("paste", (event) => {
    const items = (event.clipboardData && event.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        event.preventDefault();
        searchPhoto(item.getAsFile());
        return;
      }
    }
  });

  for (const control of [els.category, els.minPrice, els.maxPrice, els.mode]) {
    control.addEventListener("change", () => {
      const query = shownQuery();
      if (query) run(query);
    });
  }

  els.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = els.apiKey.value.trim();
    if (apiKey) sessionStorage.setItem(KEY_STORAGE, apiKey);
    else sessionStorage.removeItem(KEY_STORAGE);
    els.keyForm.hidden = true;
    const query = shownQuery();
    if (query) run(query);
  });
})();
