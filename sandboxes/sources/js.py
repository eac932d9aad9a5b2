"""JavaScript-rendered listing scraper (source kind "js").

Contract: open the URL in the context's shared headless Chromium (one browser context and
one page reused across fetches; a page that failed is closed and replaced), retrying the navigation like `FetchContext.get`
(network errors, 429 and 5xx retried; other 4xx fail at once). Wait up to ctx.timeout_s for
`#listing li` to exist and the list to stop growing, then return one record per <li>: its
data-* attributes keyed without the "data-" prefix (so data-id gives "id"), values as
strings. content_sha256 is over the final rendered HTML (page.content()), pages is 1. If no
listing ever renders, SourceError. Playwright's sync API is used, so call from one thread
and never from inside a running asyncio loop.
"""

from __future__ import annotations

from envfactory.sandboxes.sources.base import (FetchContext, FetchResult, SourceError, TransientError,
                                    register, sha256_of)

__all__ = ["LISTING_SELECTOR", "fetch_js"]

LISTING_SELECTOR = "#listing li"

_LISTING_STABLE = """
sel => {
  const n = document.querySelectorAll(sel).length;
  const prev = window.__scraperListingCount;
  window.__scraperListingCount = n;
  return n > 0 && n === prev;
}
"""

_READ_DATA_ATTRS = """
els => els.map(el => Object.fromEntries(
  el.getAttributeNames()
    .filter(n => n.startsWith('data-'))
    .map(n => [n.slice(5), el.getAttribute(n)])))
"""


def _navigate(source: str, url: str, ctx: FetchContext, page) -> None:
    from playwright.sync_api import Error as PlaywrightError

    def attempt():
        try:
            response = page.goto(url, wait_until="domcontentloaded",
                                 timeout=ctx.timeout_s * 1000)
        except PlaywrightError as exc:  # net::ERR_CONNECTION_REFUSED, navigation timeout...
            raise TransientError(str(exc).splitlines()[0]) from exc
        # goto answers None for same-document navigations; there is no status to judge.
        return None, (response.status if response is not None else 200)

    ctx.with_retries(source, url, attempt)


def _wait_for_listing(source: str, url: str, ctx: FetchContext, page) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        # Polled in the page every 20 ms: true once items exist and their count held still
        # for one poll, so a list appended over several ticks is read whole.
        page.wait_for_function(_LISTING_STABLE, arg=LISTING_SELECTOR, polling=20,
                               timeout=ctx.timeout_s * 1000)
    except PlaywrightTimeoutError as exc:
        raise SourceError.at(source, url, f"no '{LISTING_SELECTOR}' element rendered within "
                                          f"{ctx.timeout_s:g} s") from exc


@register("js")
def fetch_js(source: str, url: str, ctx: FetchContext) -> FetchResult:
    page = ctx.shared_page()
    try:
        _navigate(source, url, ctx, page)
        _wait_for_listing(source, url, ctx, page)
        records = page.eval_on_selector_all(LISTING_SELECTOR, _READ_DATA_ATTRS)
        rendered = page.content().encode("utf-8")
    except BaseException:
        ctx.discard_page(page)  # a page left mid-error is not reused; the next fetch opens a new one
        raise
    return FetchResult(source=source, url=url, records=records,
                       content_sha256=sha256_of([rendered]), pages=1)
