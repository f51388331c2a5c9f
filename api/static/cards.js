// What the search results (page.js) and the Duplicates view (duplicates.js) share: a URL is used only when it
// is http(s), and a product card starts with the catalogue's own thumbnail and the product's name, linked to
// its page. Catalogue text only ever goes in through textContent, never parsed as HTML.
"use strict";

window.lookalikeCards = (() => {
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

  return { safeUrl, productCard };
})();
