"""The offline web server and the three scrapers, against a real loopback server and a real
headless Chromium (one of each per module, to keep the file fast)."""

import hashlib
import math
import socket
import time

import httpx
import pytest

from envfactory.sandboxes import world
from envfactory.sandboxes.sources import SOURCE_KINDS, FetchContext, SourceError, fetch
from envfactory.sandboxes.sources.html import ListingParser
from envfactory.sandboxes.web import OfflineWeb

PAGE_SIZE = 3


def _city_where(pred):
    cities = world.load_cities()
    return next(cities[cid] for cid in sorted(cities) if pred(cities[cid]))


def _as_text(records, kind):
    id_field = f"{kind[:-1]}_id"
    return [{"id": r[id_field], **{k: str(v) for k, v in r.items()}} for r in records]


@pytest.fixture(scope="module")
def web():
    with OfflineWeb(page_size=PAGE_SIZE) as server:
        yield server


@pytest.fixture(scope="module")
def ctx():
    with FetchContext(backoff_s=0.01) as context:
        yield context


@pytest.fixture(scope="module")
def city7():
    """A city with >= 7 hotels and >= 7 restaurants: 3 HTML pages and 2 API pages."""
    return _city_where(lambda c: len(world.listings("hotels", c)) >= 7
                       and len(world.listings("restaurants", c)) >= 7)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server on its own -----------------------------------------------------------

def test_server_routes_and_statuses(web, city7):
    base, cid = web.base_url, city7["city_id"]
    assert base.startswith("http://127.0.0.1:")
    assert httpx.get(f"{base}/health").text.strip() == "ok"
    api = httpx.get(f"{base}/api/restaurants?city={cid}").json()
    total = len(world.listings("restaurants", city7))
    assert (api["page"], api["total"], len(api["items"])) == (1, total, 2 * PAGE_SIZE)
    assert api["next"] == f"/api/restaurants?city={cid}&page=2"
    assert httpx.get(f"{base}{api['next']}").json()["next"] is None
    assert httpx.get(f"{base}/html/castles/{cid}").status_code == 404
    assert httpx.get(f"{base}/html/hotels/999999999").status_code == 404
    assert httpx.get(f"{base}/api/hotels?city=nope").status_code == 404
    assert httpx.get(f"{base}/html/hotels/{cid}?page=0").status_code == 400
    assert httpx.get(f"{base}/html/hotels/{cid}?page=abc").status_code == 400
    assert httpx.get(f"{base}/api/hotels?city={cid}&page=99").status_code == 400
    page = httpx.get(f"{base}/html/hotels/{cid}?page=3").text
    assert 'rel="next"' not in page and "<script" not in page and "http://" not in page


def test_faults_and_hit_counts():
    with OfflineWeb(faults={"/health": 2}) as server:
        codes = [httpx.get(f"{server.base_url}/health").status_code for _ in range(4)]
        assert codes == [503, 503, 200, 200]
        # faults are counted per distinct target, so another query string fails afresh
        assert httpx.get(f"{server.base_url}/health?x=1").status_code == 503
        assert server.hits("/health") == 5 and server.hits("/health?") == 1
    with pytest.raises(httpx.ConnectError):  # stopped means stopped
        httpx.get(f"{server.base_url}/health")


# -- scrapers against the real server -------------------------------------------------

def test_html_scraper_matches_world_across_pages(web, ctx, city7):
    url = f"{web.base_url}/html/hotels/{city7['city_id']}"
    result = fetch("html", "hotels", url, ctx)
    expected = world.listings("hotels", city7)
    assert result.records == _as_text(expected, "hotels")
    assert result.pages == math.ceil(len(expected) / PAGE_SIZE) >= 3
    assert (result.source, result.url) == ("hotels", url)
    raw = b"".join(httpx.get(f"{url}?page={n}").content for n in range(1, result.pages + 1))
    assert result.content_sha256 == hashlib.sha256(raw).hexdigest()


def test_api_scraper_keeps_native_types(web, ctx, city7):
    url = f"{web.base_url}/api/restaurants?city={city7['city_id']}"
    result = fetch("api", "restaurants", url, ctx)
    assert result.records == world.listings("restaurants", city7)
    assert result.pages == 2
    assert isinstance(result.records[0]["avg_cost"], int)
    assert isinstance(result.records[0]["rating"], float)


def test_js_scraper_renders_with_chromium(web, ctx, city7):
    url = f"{web.base_url}/js/attractions/{city7['city_id']}"
    expected = world.listings("attractions", city7)
    result = fetch("js", "attractions", url, ctx)
    assert result.records == _as_text(expected, "attractions")
    assert result.pages == 1 and len(result.content_sha256) == 64
    raw = httpx.get(url).text  # without JavaScript the page holds no record at all
    assert not [r["name"] for r in expected if r["name"] in raw]
    assert "data-attraction_id" not in raw and expected[0]["attraction_id"] not in raw


def test_non_ascii_and_quotes_survive_every_route(web, ctx):
    city = _city_where(lambda c: "'" in c["name"] and not c["name"].isascii())
    cid = city["city_id"]
    expected = _as_text(world.listings("hotels", city), "hotels")
    assert city["name"] in expected[0]["name"]
    assert fetch("html", "h", f"{web.base_url}/html/hotels/{cid}", ctx).records == expected
    assert fetch("js", "h", f"{web.base_url}/js/hotels/{cid}", ctx).records == expected
    api = fetch("api", "h", f"{web.base_url}/api/hotels?city={cid}", ctx).records
    assert api == world.listings("hotels", city)


def test_retry_succeeds_after_transient_503(ctx):
    with OfflineWeb(faults={"/api/restaurants": 2}) as server:
        city = _city_where(lambda c: len(world.listings("restaurants", c)) <= 6)
        url = f"{server.base_url}/api/restaurants?city={city['city_id']}"
        result = fetch("api", "restaurants", url, ctx)
        assert result.records == world.listings("restaurants", city)
        assert result.pages == 1 and server.hits("/api/restaurants") == 3


def test_js_navigation_is_retried(ctx):
    with OfflineWeb(faults={"/js/venues": 1}) as server:
        city = world.load_cities()["1796236"]
        result = fetch("js", "venues", f"{server.base_url}/js/venues/1796236", ctx)
        assert result.records == _as_text(world.listings("venues", city), "venues")
        assert server.hits("/js/venues") == 2


def test_faults_beyond_retries_raise(ctx):
    with OfflineWeb(faults={"/html/hotels": 50}) as server:
        url = f"{server.base_url}/html/hotels/1796236"
        with pytest.raises(SourceError) as err:
            fetch("html", "hotels", url, ctx)
        message = str(err.value)
        assert message.startswith(f"source 'hotels' ({url}): HTTP 503")
        assert "\n" not in message and "4 attempts" in message
        assert server.hits("/html/hotels") == ctx.retries + 1 == 4


@pytest.mark.parametrize("kind,path", [("html", "/html/hotels/999999999"),
                                       ("api", "/api/castles?city=1796236"),
                                       ("js", "/js/hotels/999999999")])
def test_404_fails_at_once(web, ctx, kind, path):
    before = web.hits(path)
    with pytest.raises(SourceError, match=r"HTTP 404 not found") as err:
        fetch(kind, "src", web.base_url + path, ctx)
    assert web.base_url + path in str(err.value) and "'src'" in str(err.value)
    assert web.hits(path) - before == 1


def test_malformed_sources_raise(web, ctx, monkeypatch):
    with pytest.raises(SourceError, match=r"\(.*/broken/json\): invalid JSON"):
        fetch("api", "bad", f"{web.base_url}/broken/json", ctx)
    with pytest.raises(SourceError, match=r"no \"items\" list|invalid JSON"):
        fetch("api", "bad", f"{web.base_url}/health", ctx)
    with pytest.raises(SourceError, match=r"/broken/html\): no listing table found"):
        fetch("html", "bad", f"{web.base_url}/broken/html", ctx)
    monkeypatch.setattr(ctx, "timeout_s", 0.5)  # the listing never appears; don't wait 10 s
    with pytest.raises(SourceError, match=r"no '#listing li' element rendered"):
        fetch("js", "bad", f"{web.base_url}/broken/html", ctx)


@pytest.mark.parametrize("kind", ["html", "api", "js"])
def test_unreachable_port_names_url(ctx, kind):
    url = f"http://127.0.0.1:{_closed_port()}/html/hotels/1"
    with pytest.raises(SourceError) as err:
        fetch(kind, "gone", url, ctx)
    assert f"source 'gone' ({url})" in str(err.value)
    assert "4 attempts" in str(err.value)


def test_registry_and_unknown_kind(ctx):
    assert {"html", "api", "js"} <= set(SOURCE_KINDS)
    with pytest.raises(SourceError, match=r"unknown source kind 'ftp'"):
        fetch("ftp", "s", "http://127.0.0.1:1/", ctx)


def test_missing_chromium_is_a_clear_error(tmp_path):
    path = str(tmp_path / "no-chromium")
    with FetchContext(chromium_path=path) as context:
        with pytest.raises(SourceError, match=r"apt-get install -y chromium") as err:
            context.browser()
        assert path in str(err.value)


# -- unit tests ----------------------------------------------------------------------

def _scripted(responses):
    """A MockTransport answering from `responses` (status ints or exceptions) in order."""
    calls = []

    def handler(request):
        calls.append(str(request.url))
        item = responses[min(len(calls), len(responses)) - 1]
        if isinstance(item, Exception):
            raise item
        return httpx.Response(item, text="body")
    return httpx.MockTransport(handler), calls


def test_get_retries_with_exponential_backoff():
    transport, calls = _scripted([503, 429, httpx.ConnectError("refused"), 200])
    with FetchContext(transport=transport, retries=3, backoff_s=0.02) as context:
        start = time.perf_counter()
        response = context.get("s", "http://example.test/x")
        elapsed = time.perf_counter() - start
    assert response.status_code == 200 and len(calls) == 4
    assert 0.02 + 0.04 + 0.08 <= elapsed < 1.0


def test_get_gives_up_and_fails_fast():
    transport, calls = _scripted([500])
    with FetchContext(transport=transport, retries=2, backoff_s=0.001) as context:
        with pytest.raises(SourceError, match=r"^source 's' \(http://x.test/\): HTTP 500 "
                                              r"internal server error \(gave up after 3"):
            context.get("s", "http://x.test/")
    assert len(calls) == 3
    transport, calls = _scripted([403])
    with FetchContext(transport=transport, retries=5, backoff_s=0.001) as context:
        with pytest.raises(SourceError, match=r"HTTP 403 forbidden$"):
            context.get("s", "http://x.test/")
    assert len(calls) == 1


def test_listing_parser_is_selective():
    parser = ListingParser()
    parser.feed(
        '<table class="legend"><tr data-id="no"><td data-field="x">legend</td></tr></table>'
        '<a rel="nofollow" href="/a">a</a><a rel="prev" href="/p">p</a>'
        '<table class="wide listing"><tr><th data-field="name">Name</th></tr>'
        '<tr data-id="1"><td data-field="name"> Caf&eacute; &amp; Bar </td>'
        '<td>ignored</td><td data-field="note"><table><tr><td>in</td></tr></table>x'
        '<tr data-id="2"><td data-field="name">Two'  # omitted </td></tr>
        '</table><a class="btn" rel="next noopener" href="?page=2">next</a>')
    parser.close()
    assert parser.found_table and parser.next_href == "?page=2"
    assert parser.records == [{"id": "1", "name": "Café & Bar", "note": "inx"},
                              {"id": "2", "name": "Two"}]
