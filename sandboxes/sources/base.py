"""Shared scraper machinery: the result type, the error type, the fetch context, dispatch.

Contract: a scraper is a function `(source, url, ctx) -> FetchResult` registered under a
source kind with `@register(kind)`; `fetch(kind, source, url, ctx)` dispatches to it. Every
failure a caller should see (network, HTTP status, malformed content) is a `SourceError`
whose one-line message names the source and the URL. `FetchContext` owns one httpx client
and, lazily, one headless Chromium (Playwright sync API) reused by every fetch; it retries
transient failures (connection errors, timeouts, HTTP 429 and 5xx) with exponential backoff
and fails at once on other 4xx.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import httpx

__all__ = [
    "FetchResult",
    "SourceError",
    "TransientError",
    "FetchContext",
    "SOURCE_KINDS",
    "register",
    "fetch",
    "sha256_of",
    "CHROMIUM_ARGS",
    "DEFAULT_CHROMIUM",
]

T = TypeVar("T")

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Headless in a container with no internet: no sandbox (root in Docker), and none of the
# background traffic Chromium would otherwise try (updates, sync, field trials, QUIC).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


@dataclass(frozen=True)
class FetchResult:
    source: str            # the source name given by the caller
    url: str               # the first URL fetched
    records: list[dict]    # one dict per record, field -> value
    content_sha256: str    # sha256 over the raw bytes of every fetched page/response, in order
    pages: int             # number of pages/responses fetched


class SourceError(Exception):
    """One clear line naming the source and URL, e.g.
    "source 'hotels' (http://127.0.0.1:5/html/hotels/1): HTTP 404 not found"."""

    def __init__(self, message: str, *, source: str | None = None, url: str | None = None):
        super().__init__(message)
        self.source = source
        self.url = url

    @classmethod
    def at(cls, source: str, url: str, detail: str) -> "SourceError":
        return cls(f"source {source!r} ({url}): {detail}", source=source, url=url)


class TransientError(Exception):
    """Raised inside a `FetchContext.with_retries` attempt for a failure worth retrying."""


def sha256_of(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _status_text(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase.lower()}"
    except ValueError:
        return f"HTTP {status}"


class FetchContext:
    """One httpx client and one lazily launched browser, shared by all fetches.

    `retries` is the number of extra attempts after the first (so 3 means up to 4 tries);
    the waits are backoff_s, 2*backoff_s, 4*backoff_s, ... The Playwright half is bound to
    the thread that first calls `browser()`: use a context from one thread only.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None, retries: int = 3,
                 backoff_s: float = 0.05, timeout_s: float = 10.0,
                 chromium_path: str | None = None):
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.chromium_path = chromium_path
        self.client = httpx.Client(transport=transport, timeout=timeout_s,
                                   follow_redirects=True,
                                   headers={"User-Agent": "envfactory-scraper/0.1"})
        self._playwright = None
        self._browser = None
        self._context = None
        self._page = None

    # -- retries ---------------------------------------------------------------------
    def with_retries(self, source: str, url: str, attempt: Callable[[], tuple[T, int]]) -> T:
        """Run `attempt` (returning (value, http_status)) until it succeeds or gives up.

        TransientError or a 429/5xx status is retried; another 4xx raises at once."""
        last = "no attempt made"
        for n in range(self.retries + 1):
            if n:
                time.sleep(self.backoff_s * 2 ** (n - 1))
            try:
                value, status = attempt()
            except TransientError as exc:
                last = str(exc)
                continue
            if status == 429 or status >= 500:
                last = _status_text(status)
                continue
            if status >= 400:
                raise SourceError.at(source, url, _status_text(status))
            return value
        raise SourceError.at(source, url, f"{last} (gave up after {self.retries + 1} attempts)")

    def get(self, source: str, url: str) -> httpx.Response:
        """GET `url` with retries; returns a 2xx/3xx response or raises SourceError."""
        def attempt() -> tuple[httpx.Response, int]:
            try:
                response = self.client.get(url)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise TransientError(f"{type(exc).__name__}: {exc}") from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise SourceError.at(source, url, f"{type(exc).__name__}: {exc}") from exc
            return response, response.status_code
        return self.with_retries(source, url, attempt)

    # -- browser ---------------------------------------------------------------------
    def browser(self) -> Any:
        """The shared headless Chromium (playwright.sync_api.Browser), launched on first use."""
        if self._browser is not None:
            return self._browser
        path = self.chromium_path or os.environ.get("FACTORY_CHROMIUM") or DEFAULT_CHROMIUM
        if not os.path.isfile(path):
            raise SourceError(f"Chromium not found at {path}; "
                              "install it with: apt-get install -y chromium")
        from playwright.sync_api import sync_playwright  # heavy; only js sources need it

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=path, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:
            self._playwright.stop()
            self._playwright = None
            raise SourceError(f"Chromium at {path} failed to launch: {exc}") from exc
        return self._browser

    def new_page(self) -> Any:
        """A fresh page in the one shared browser context (cookies/cache shared)."""
        if self._context is None:
            self._context = self.browser().new_context()
        return self._context.new_page()

    def shared_page(self) -> Any:
        """One page reused for every JS fetch: a new page costs ~130 ms, a navigation ~30 ms."""
        page = self._page
        if page is None or page.is_closed():
            page = self._page = self.new_page()
        return page

    def discard_page(self, page) -> None:
        """Stop reusing `page` after a failed fetch, without closing it now: a close() that
        lands while Chromium is still committing its error page can hang for good (seen
        with Chromium 156, about 1 run in 5 of the unreachable-port test). The browser
        context closes it with everything else in close()."""
        if self._page is page:
            self._page = None

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        # Each step guarded: a crashed browser must not stop the client being closed.
        for closer in (getattr(self._context, "close", None), getattr(self._browser, "close", None),
                       getattr(self._playwright, "stop", None), self.client.close):
            if closer is None:
                continue
            try:
                closer()
            except Exception:
                pass
        self._context = self._browser = self._playwright = self._page = None

    def __enter__(self) -> "FetchContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SOURCE_KINDS: dict[str, Callable[[str, str, FetchContext], FetchResult]] = {}


def register(kind: str) -> Callable:
    """Decorator: make `fn(source, url, ctx) -> FetchResult` the scraper for `kind`."""
    def deco(fn: Callable[[str, str, FetchContext], FetchResult]):
        SOURCE_KINDS[kind] = fn
        return fn
    return deco


def fetch(kind: str, source: str, url: str, ctx: FetchContext) -> FetchResult:
    """Fetch `url` with the scraper registered for `kind`."""
    scraper = SOURCE_KINDS.get(kind)
    if scraper is None:
        raise SourceError.at(source, url, f"unknown source kind {kind!r}; "
                                          f"known kinds: {sorted(SOURCE_KINDS)}")
    return scraper(source, url, ctx)
