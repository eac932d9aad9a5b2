"""Configured scrapers (sources.rules) against the offline web's table routes, a real loopback
server and a real headless Chromium (one of each per module), plus the error paths."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from envfactory.sandboxes import world
from envfactory.sandboxes.sources import FetchContext, SourceError, fetch
from envfactory.sandboxes.sources.rules import ScrapeRule, scrape, validate_rule
from envfactory.sandboxes.web import OfflineWeb

PAGE_SIZE = 4
NAMES = ["Hôtel Étoile", "Ryokan 京都", "Пансион Нева", "Casa Ñandú", "Dom Łódź"]


def _row(i: int) -> dict:
    return {
        "hotel_id": 1000 + i,
        "name": f"{NAMES[i % len(NAMES)]} {i}",
        "city_id": 7 if i % 3 == 0 else 8,
        "rating": None if i == 5 else round(2.5 + i * 0.1, 2),
        "note": "cheap <&> cheerful \"quoted\"" if i == 3 else f"note {i}",
        "rooms": 10 * i,
    }


ROWS = [_row(i) for i in range(25)]
COLUMNS = list(ROWS[0])


def _as_text(rows):
    return [{k: None if v is None else str(v) for k, v in r.items()} for r in rows]


# One <article class="row"> per row; `:not(.null)?` turns the empty span of a None into None.
MARKUP_FIELDS = {c: f"span.f-{c}:not(.null)?" for c in COLUMNS}
ROWS_SELECTOR = "section.results > article.row"


@pytest.fixture(scope="module")
def web():
    with OfflineWeb(page_size=PAGE_SIZE, tables={"hotels": ROWS}) as server:
        yield server


@pytest.fixture(scope="module")
def ctx():
    with FetchContext(backoff_s=0.01, timeout_s=5) as context:
        yield context


# -- the table routes on their own ------------------------------------------------------

def test_table_routes_and_statuses(web):
    base = web.base_url
    doc = httpx.get(f"{base}/data/hotels.json").json()
    assert doc == {"data": {"results": ROWS[:8]}, "links": {"next": "/data/hotels.json?page=2"}}
    doc = httpx.get(f"{base}/data/hotels.json?city_id=7&page=2").json()
    assert doc["data"]["results"] == [r for r in ROWS if r["city_id"] == 7][8:]
    assert doc["links"]["next"] is None
    assert httpx.get(f"{base}/data/hotels.json?page=9").json()["data"]["results"] == []
    assert httpx.get(f"{base}/data/castles.json").status_code == 404
    assert httpx.get(f"{base}/data/hotels.xml").status_code == 404
    assert httpx.get(f"{base}/data/hotels.html?colour=red").status_code == 400
    assert httpx.get(f"{base}/data/hotels.js?page=0").status_code == 400
    assert httpx.get(f"{base}/data/hotels.json?page=x").status_code == 400
    page = httpx.get(f"{base}/data/hotels.html").text
    assert "cheap &lt;&amp;&gt; cheerful &quot;quoted&quot;" in page
    assert '<a class="next" href="/data/hotels.html?page=2">' in page
    page = httpx.get(f"{base}/data/hotels.html?page=2").text  # rows 4..7: row 5 is None-rated
    assert '<span class="f-rating null"></span>' in page
    raw_js = httpx.get(f"{base}/data/hotels.js").text
    assert 'class="row"' not in raw_js and "Hôtel" not in raw_js and 'class="next"' not in raw_js
    assert httpx.get(f"{base}/health").text.strip() == "ok"  # the old routes still answer


def test_add_table_rejects_bad_tables():
    web = OfflineWeb()
    with pytest.raises(ValueError, match="table 'bad': row 1 has columns"):
        web.add_table("bad", [{"a": 1}, {"b": 2}])
    with pytest.raises(ValueError, match="table name 'x/y'"):
        web.add_table("x/y", [])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        web.add_table("obj", [{"a": object()}])


# -- the three kinds, both paging styles, filters --------------------------------------

def test_api_next_link_whole_rows(web, ctx):
    rule = ScrapeRule("api", rows="data.results", next="links.next")
    result = scrape("hotels", f"{web.base_url}/data/hotels.json", rule, ctx)
    assert result.records == ROWS  # native types: ints, floats, None, unicode
    assert result.pages == 4


def test_api_page_param_fields_and_filter(web, ctx):
    rule = ScrapeRule("api", rows="data.results", page_param="page",
                      fields={"id": "hotel_id", "name": "", "rating": "rating", "star": "star?"})
    result = scrape("hotels", f"{web.base_url}/data/hotels.json?city_id=8", rule, ctx)
    kept = [r for r in ROWS if r["city_id"] == 8]
    assert result.records == [{"id": r["hotel_id"], "name": r["name"], "rating": r["rating"],
                               "star": None} for r in kept]
    assert result.pages == 3  # 16 rows: two full pages, then the empty one that ends paging


def test_html_next_link(web, ctx):
    rule = ScrapeRule("html", rows=ROWS_SELECTOR, fields=MARKUP_FIELDS, next="nav.pager a.next")
    result = scrape("hotels", f"{web.base_url}/data/hotels.html", rule, ctx)
    assert result.records == _as_text(ROWS)
    assert result.pages == 7


def test_html_page_param_filter_and_attributes(web, ctx):
    fields = {"key": "@data-key", "name": "span.f-name", "rating_class": "span.f-rating@class"}
    rule = ScrapeRule("html", rows="article.row", fields=fields, page_param="page")
    result = scrape("hotels", f"{web.base_url}/data/hotels.html?city_id=7", rule, ctx)
    kept = [r for r in ROWS if r["city_id"] == 7]
    assert result.records == [{"key": str(r["hotel_id"]), "name": r["name"],
                               "rating_class": "f-rating null" if r["rating"] is None
                               else "f-rating"} for r in kept]
    assert result.pages == 4  # 9 rows: 4 + 4 + 1, then the empty page


def test_js_next_link(web, ctx):
    rule = ScrapeRule("js", rows=ROWS_SELECTOR, fields=MARKUP_FIELDS, next="a.next")
    result = scrape("hotels", f"{web.base_url}/data/hotels.js", rule, ctx)
    assert result.records == _as_text(ROWS)
    assert result.pages == 7


def test_js_page_param_and_filter(web, ctx):
    # The page past the last renders no rows; its data-ready mark ends the wait at once.
    rule = ScrapeRule("js", rows=ROWS_SELECTOR, fields=MARKUP_FIELDS, page_param="page")
    result = scrape("hotels", f"{web.base_url}/data/hotels.js?city_id=8&city_id=7", rule, ctx)
    assert result.records == _as_text(ROWS)
    assert result.pages == 8


def test_rule_reads_the_fixed_html_format_like_its_own_scraper(web, ctx):
    city = next(c for _, c in sorted(world.load_cities().items())
                if len(world.listings("hotels", c)) >= 7)
    url = f"{web.base_url}/html/hotels/{city['city_id']}"
    rule = ScrapeRule("html", rows="table.listing tr[data-id]", next="a[rel~=next]",
                      fields={"id": "@data-id", "name": "td[data-field=name]"})
    fixed = fetch("html", "hotels", url, ctx)
    assert scrape("hotels", url, rule, ctx).records == [
        {"id": r["id"], "name": r["name"]} for r in fixed.records]


# -- errors --------------------------------------------------------------------------------

class _Trap(BaseHTTPRequestHandler):
    """Self-linking pages, a page-ignoring listing and non-object rows."""

    PAGES = {
        "/loop.json": ("application/json", json.dumps({"items": [{"a": 1}], "next": "/loop.json"})),
        "/a.html": ("text/html", '<div class="r">1</div><a class="next" href="/b.html#top">n</a>'),
        "/b.html": ("text/html", '<div class="r">2</div><a class="next" href="a.html">n</a>'),
        "/same.json": ("application/json", json.dumps({"items": [{"a": 1}]})),
        "/scalars.json": ("application/json", json.dumps({"items": [{"a": 1}, 2]})),
    }

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        ctype, body = self.PAGES.get(self.path.split("?")[0], ("text/plain", "nope"))
        data = body.encode("utf-8")
        self.send_response(200 if ctype != "text/plain" else 404)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def trap():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trap)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _error(url, rule, ctx) -> str:
    with pytest.raises(SourceError) as info:
        scrape("hotels", url, rule, ctx)
    message = str(info.value)
    assert "\n" not in message and message.startswith("source 'hotels' (")
    return message


def test_missing_field_names_field_and_page(web, ctx):
    url = f"{web.base_url}/data/hotels.html?page=2"
    rule = ScrapeRule("html", rows=ROWS_SELECTOR, fields={"name": "span.f-name", "x": "span.f-x"})
    assert _error(url, rule, ctx) == (f"source 'hotels' ({url}): field 'x': selector 'span.f-x' "
                                      "matched nothing in row 0")
    # A None renders as an empty span: without "?" a selector skipping it is an error too.
    rule = ScrapeRule("html", rows=ROWS_SELECTOR, fields={"r": "span.f-rating:not(.null)"})
    assert "field 'r'" in _error(f"{web.base_url}/data/hotels.html?page=2", rule, ctx)
    rule = ScrapeRule("api", rows="data.results", fields={"id": "hotel_id", "star": "star"})
    url = f"{web.base_url}/data/hotels.json"
    assert _error(url, rule, ctx) == (f"source 'hotels' ({url}): field 'star': path 'star' "
                                      "not found in row 0")


def test_bad_rows_path_invalid_json_and_scalar_rows(web, trap, ctx):
    url = f"{web.base_url}/data/hotels.json"
    assert _error(url, ScrapeRule("api", rows="data.items"), ctx).endswith(
        "rows path 'data.items' holds nothing, not a list")
    assert _error(url, ScrapeRule("api", rows="links"), ctx).endswith(
        "rows path 'links' holds an object, not a list")
    assert "invalid JSON" in _error(f"{web.base_url}/broken/json", ScrapeRule("api", "items"), ctx)
    assert _error(f"{trap}/scalars.json", ScrapeRule("api", "items"), ctx).endswith(
        "row 1 is a number, not an object")
    assert "HTTP 404" in _error(f"{web.base_url}/data/nope.json", ScrapeRule("api", ""), ctx)


def test_pagination_loops_and_limits(web, trap, ctx):
    msg = _error(f"{trap}/loop.json", ScrapeRule("api", rows="items", next="next"), ctx)
    assert msg == (f"source 'hotels' ({trap}/loop.json): "
                   "pagination loops back to a page already read")
    html_rule = ScrapeRule("html", rows="div.r", fields={"v": ""}, next="a.next")
    assert _error(f"{trap}/a.html", html_rule, ctx) == (
        f"source 'hotels' ({trap}/a.html): pagination loops back to a page already read")
    msg = _error(f"{trap}/same.json", ScrapeRule("api", rows="items", page_param="p"), ctx)
    assert msg.endswith("page parameter 'p' looks ignored: this page repeats the previous one")
    rule = ScrapeRule("api", rows="data.results", next="links.next", max_pages=3)
    assert _error(f"{web.base_url}/data/hotels.json", rule, ctx).endswith(
        "more than 3 pages; refusing to go on")


def test_js_rows_that_never_render_time_out(web, ctx, monkeypatch):
    # The static page never sets data-ready. One sync Playwright per thread: shorten the
    # shared context's timeout rather than open a second context.
    monkeypatch.setattr(ctx, "timeout_s", 1)
    rule = ScrapeRule("js", rows="section.results > div.card", fields={"n": ""})
    url = f"{web.base_url}/data/hotels.html"
    assert _error(url, rule, ctx) == (
        f"source 'hotels' ({url}): no row matching 'section.results > div.card' rendered "
        "and the page set no data-ready within 1 s")


@pytest.mark.parametrize("rule, reason", [
    (ScrapeRule("xml", rows="a"), "unknown kind 'xml'; expected one of api, html, js"),
    (ScrapeRule("html", rows=" ", fields={"a": ""}),
     "rows must be a CSS selector for kind 'html', got an empty string"),
    (ScrapeRule("js", rows="li"), "kind 'js' needs at least one field"),
    (ScrapeRule("api", rows="items", next="next", page_param="page"),
     "give either next or page_param, not both"),
    (ScrapeRule("html", rows="li[", fields={"a": ""}), "rows: bad CSS selector 'li['"),
    (ScrapeRule("html", rows="li", fields={"a": "span::"}), "field 'a': bad CSS selector"),
    (ScrapeRule("api", rows="data..results"), "rows: bad dotted path 'data..results'"),
    (ScrapeRule("api", rows="items", max_pages=0), "max_pages must be an integer >= 1, got 0"),
    (ScrapeRule("api", rows="items", page_param=""), "page_param must be a non-empty string"),
])
def test_validate_rule_reasons(rule, reason, web, ctx):
    assert validate_rule(rule).startswith(reason)
    assert "invalid scrape rule: " + reason in _error(f"{web.base_url}/health", rule, ctx)


def test_validate_rule_accepts_good_rules():
    assert validate_rule(ScrapeRule("api", rows="", fields={"a": "x.0.y?"})) is None
    assert validate_rule(ScrapeRule("js", rows=ROWS_SELECTOR, fields=MARKUP_FIELDS,
                                    next='a[href^="mailto:x@y"]@href')) is None
