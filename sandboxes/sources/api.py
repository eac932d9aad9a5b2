"""JSON API scraper (source kind "api").

Contract: GET the URL, expect a JSON object with an "items" list of objects and a "next"
that is a (possibly relative) URL or null; follow "next" until null, concatenating items.
Values keep their JSON types. Invalid JSON, a body without an "items" list, a non-object
item, a bad "next", a pagination loop or more than MAX_PAGES pages raise SourceError.
"""

from __future__ import annotations

import json
from urllib.parse import urljoin

from envfactory.sandboxes.sources.base import FetchContext, FetchResult, SourceError, register, sha256_of

__all__ = ["MAX_PAGES", "fetch_api"]

MAX_PAGES = 200


def _parse(source: str, url: str, body: bytes) -> tuple[list[dict], str | None]:
    try:
        doc = json.loads(body)
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError alike
        raise SourceError.at(source, url, f"invalid JSON: {exc}") from exc
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise SourceError.at(source, url, "response has no \"items\" list")
    if not all(isinstance(item, dict) for item in items):
        raise SourceError.at(source, url, "\"items\" holds a value that is not an object")
    nxt = doc.get("next")
    if nxt is not None and (not isinstance(nxt, str) or not nxt):
        raise SourceError.at(source, url, f"\"next\" must be a URL or null, got {nxt!r}")
    return items, nxt


@register("api")
def fetch_api(source: str, url: str, ctx: FetchContext) -> FetchResult:
    records: list[dict] = []
    bodies: list[bytes] = []
    seen: set[str] = set()
    page_url: str | None = url
    while page_url is not None:
        if page_url in seen:
            raise SourceError.at(source, page_url, "pagination loops back to a page already read")
        if len(seen) >= MAX_PAGES:
            raise SourceError.at(source, url, f"more than {MAX_PAGES} pages; refusing to go on")
        seen.add(page_url)
        response = ctx.get(source, page_url)
        bodies.append(response.content)
        items, nxt = _parse(source, page_url, response.content)
        records.extend(items)
        page_url = urljoin(str(response.url), nxt) if nxt else None
    return FetchResult(source=source, url=url, records=records,
                       content_sha256=sha256_of(bodies), pages=len(bodies))
