"""Scrapers that turn a source URL into records, one module per source kind.

Contract: `fetch(kind, source, url, ctx) -> FetchResult` with kind one of
  "html"  static pages: rows of <table class="listing"> (<tr data-id>, <td data-field>),
          following <a rel="next">; values are strings
  "api"   JSON {"items": [...], "next": url-or-null}, following "next"; values keep JSON types
  "js"    a page rendered by JavaScript in headless Chromium: <li> items of #listing,
          each record is the li's data-* attributes (data-id -> "id"); values are strings
html and js records also carry the row id under "id"; the caller casts strings to its
declared column types. FetchResult holds the records, the first URL, the page count and
a sha256 over every raw page fetched. Every failure is a SourceError whose message is one
line naming the source and the URL. A FetchContext (one httpx client, one lazily started
browser, retry policy) is shared across fetches and must be closed; use it from one thread.
"""

from envfactory.sandboxes.sources import api as _api  # noqa: F401  (imported to register "api")
from envfactory.sandboxes.sources import html as _html  # noqa: F401  (registers "html")
from envfactory.sandboxes.sources import js as _js  # noqa: F401  (registers "js")
from envfactory.sandboxes.sources.base import SOURCE_KINDS, FetchContext, FetchResult, SourceError, fetch

__all__ = ["FetchResult", "SourceError", "FetchContext", "fetch", "SOURCE_KINDS"]
