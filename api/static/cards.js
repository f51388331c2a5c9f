// What the search results (page.js) and the Duplicates view (duplicates.js) share: one way to call the API and
// read its error body, a URL used only when it is http(s), and a product card that starts with the catalogue's
// own thumbnail and the product's name, linked to its page. Catalogue text only ever goes in through
// textContent, never parsed as HTML.
"use strict";

window.lookalikeCards = (() => {
  // An answer that is not 2xx: the API's {"error": reason, "detail": text} (or what HTTP said), and the status;
  // a request that never got an answer is reason "network", status 0.
  class ApiError extends Error {
    constructor(reason, detail, status) {
      super(`${detail} (${reason})`);
      this.reason = reason;
      this.detail = detail;
      this.status = status;
    }
  }

  // JSON in (or FormData, sent as it is) and JSON out; the API key, when there is one, in X-API-Key;
  // onUnauthorized() is called on a 401 before the ApiError is thrown (to ask for a key).
  async function callApi(method, url, body, { apiKey, onUnauthorized } = {}) {
    const headers = { Accept: "application/json" };
    if (apiKey) headers["X-API-Key"] = apiKey;
    const init = { method, headers };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw new ApiError("network", String(error), 0);
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      if (response.status === 401 && onUnauthorized) onUnauthorized();
      const reason = data && typeof data.error === "string" ? data.error : `http_${response.status}`;
      const detail = data && typeof data.detail === "string" ? data.detail : response.statusText;
      throw new ApiError(reason, detail, response.status);
    }
    return data;
  }

  function safeUrl(value) {
    if (typeof value !== "string" || !value) return null;
    try {
      const url = new URL(value, window.location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  // <article class="card" data-product-id> holding the thumbnail and a body with the name; the caller adds the
  // rest of the body.
  function productCard(item) {
    const article = document.createElement("article");
    article.className = "card";
    article.dataset.productId = item.product_id;
    const link = safeUrl(item.product_url);

    const thumb = document.createElement(link ? "a" : "div");
    thumb.className = "thumb";
    const image = document.createElement("img");
    image.loading = "lazy";
    image.referrerPolicy = "no-referrer";
    image.alt = item.name || item.product_id;
    const source = safeUrl(item.image_url);
    // A thumbnail that does not load leaves an empty tile, never a broken-image icon.
    image.addEventListener("error", () => {
      image.hidden = true;
      thumb.classList.add("missing");
    });
    if (source) image.src = source;
    else thumb.classList.add("missing");
    thumb.append(image);

    const body = document.createElement("div");
    body.className = "body";
    const name = document.createElement(link ? "a" : "span");
    name.className = "name";
    name.textContent = item.name || item.product_id;
    name.title = item.name || item.product_id; // the whole name, when the card clamps it
    for (const anchor of link ? [thumb, name] : []) {
      anchor.href = link;
      anchor.target = "_blank";
      anchor.rel = "noopener noreferrer";
    }
    body.append(name);
    article.append(thumb, body);
    return { article, body };
  }

  return { ApiError, callApi, safeUrl, productCard };
})();
