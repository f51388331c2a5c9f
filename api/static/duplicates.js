// The page's "Duplicates" view: groups of listings that show the same photo, side by side, with the two
// decision buttons for each pair. The cards come from cards.js (catalogue text only through textContent, links
// and thumbnails only when they are http(s) URLs); the API key is page.js's, from the same session storage.
"use strict";

(() => {
  const KEY_STORAGE = "lookalike-api-key";
  const PAGE = 20;
  const $ = (id) => document.getElementById(id);
  const els = {
    viewSearch: $("view-search"),
    viewDuplicates: $("view-duplicates"),
    searchView: $("search-view"),
    section: $("duplicates"),
    status: $("dup-status"),
    error: $("dup-error"),
    groups: $("dup-groups"),
    more: $("dup-more"),
    keyForm: $("key-form"),
  };
  let shown = 0;

  const { callApi, productCard } = window.lookalikeCards;

  function call(method, url, body) {
    const unauthorized = () => {
      if (!els.keyForm) return;
      els.keyForm.hidden = false;
      els.searchView.hidden = false;
    };
    return callApi(method, url, body, { apiKey: sessionStorage.getItem(KEY_STORAGE), onUnauthorized: unauthorized });
  }

  function product(item) {
    const { article, body } = productCard(item);
    const meta = document.createElement("div");
    meta.className = "meta";
    const id = document.createElement("span");
    id.className = "product-id";
    id.textContent = item.product_id;
    const price = document.createElement("span");
    price.className = "price";
    price.textContent = item.price || "";
    meta.append(id, price);
    body.append(meta);
    return article;
  }

  function pairRow(pair, names) {
    const row = document.createElement("div");
    row.className = "pair";
    row.dataset.a = pair.a;
    row.dataset.b = pair.b;
    const text = document.createElement("span");
    const score = pair.score === null ? "marked same" : `score ${Number(pair.score).toFixed(4)}`;
    text.textContent = `${names[pair.a] || pair.a} ↔ ${names[pair.b] || pair.b}: ${score} ` +
      `(threshold ${pair.threshold} from ${pair.threshold_source})`;
    const same = document.createElement("button");
    same.type = "button";
    same.className = "same";
    same.textContent = "Same product";
    const distinct = document.createElement("button");
    distinct.type = "button";
    distinct.className = "distinct";
    distinct.textContent = "Different products";
    same.disabled = pair.decision === "same";
    for (const [button, decision] of [[same, "same"], [distinct, "distinct"]]) {
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          await call("POST", "/v1/duplicates/decisions", { a: pair.a, b: pair.b, decision });
          await load(true);
        } catch (error) {
          showError(error);
          button.disabled = false;
        }
      });
    }
    row.append(text, same, distinct);
    return row;
  }

  function group(data) {
    const box = document.createElement("section");
    box.className = "group";
    const names = Object.fromEntries(data.products.map((item) => [item.product_id, item.name || item.product_id]));
    const cards = document.createElement("div");
    cards.className = "side-by-side";
    cards.append(...data.products.map(product));
    const pairs = document.createElement("div");
    pairs.className = "pairs";
    pairs.append(...data.pairs.map((pair) => pairRow(pair, names)));
    box.append(cards, pairs);
    return box;
  }

  function showError(error) {
    els.error.textContent = String(error.message || error);
    els.error.hidden = false;
  }

  async function load(fresh) {
    els.error.hidden = true;
    const offset = fresh ? 0 : shown;
    els.status.textContent = "Loading duplicate listings…";
    try {
      const data = await call("GET", `/v1/duplicates?offset=${offset}&limit=${PAGE}`);
      const made = data.groups.map(group);
      if (fresh) els.groups.replaceChildren(...made);
      else els.groups.append(...made);
      shown = offset + data.groups.length;
      els.more.hidden = shown >= data.total;
      els.status.textContent = data.total
        ? `${data.total} group${data.total === 1 ? "" : "s"} of duplicate listings, best evidence first`
        : "No duplicate listings found.";
      els.groups.dataset.seq = String(Number(els.groups.dataset.seq || "0") + 1);
    } catch (error) {
      els.status.textContent = "";
      showError(error);
    }
  }

  function show(duplicates) {
    els.section.hidden = !duplicates;
    els.searchView.hidden = duplicates;
    els.viewSearch.setAttribute("aria-pressed", String(!duplicates));
    els.viewDuplicates.setAttribute("aria-pressed", String(duplicates));
    if (duplicates) load(true);
  }

  els.viewSearch.addEventListener("click", () => show(false));
  els.viewDuplicates.addEventListener("click", () => show(true));
  els.more.addEventListener("click", () => load(false));
})();
