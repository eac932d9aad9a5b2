"""Static HTML listing scraper (source kind "html").

Contract: GET the URL, collect every row `<tr data-id=...>` of `<table class="listing">`
as {"id": data-id, FIELD: text of <td data-field="FIELD">, ...} (strings, whitespace-trimmed,
entities decoded), then follow `<a rel="next" href>` (relative links resolved) until there
is none. Other tables, links and page chrome are ignored. A page without a listing table,
a pagination loop or more than MAX_PAGES pages raise SourceError. Parsing uses only the
standard library's HTMLParser.
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin

from envfactory.sandboxes.sources.base import FetchContext, FetchResult, SourceError, register, sha256_of

__all__ = ["MAX_PAGES", "ListingParser", "fetch_html"]

MAX_PAGES = 200


def _tokens(value: str | None) -> set[str]:
    return set((value or "").split())


class ListingParser(HTMLParser):
    """Collects `table.listing` rows and the first rel=next link of one page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found_table = False
        self.records: list[dict] = []
        self.next_href: str | None = None
        self._depth = 0            # table nesting depth inside the listing table (0: outside)
        self._row: dict | None = None
        self._field: str | None = None
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and self.next_href is None and "next" in _tokens(a.get("rel")):
            self.next_href = a.get("href")
        if tag == "table":
            if self._depth:
                self._depth += 1
            elif "listing" in _tokens(a.get("class")):
                self.found_table, self._depth = True, 1
            return
        if self._depth != 1:  # outside the listing, or inside a table nested in a cell
            return
        if tag == "tr":  # HTML lets </td> and </tr> be omitted: a new row closes both
            self._end_row()
            if a.get("data-id") is not None:
                self._row = {"id": a["data-id"]}
        elif tag in ("td", "th"):
            self._end_cell()
            if self._row is not None and tag == "td" and a.get("data-field"):
                self._field = a["data-field"]

    def handle_endtag(self, tag):
        if not self._depth:
            return
        if tag == "table":
            self._depth -= 1
            if not self._depth:
                self._end_row()
        elif self._depth > 1:  # a nested table's cells are just text of the outer cell
            return
        elif tag in ("td", "th"):
            self._end_cell()
        elif tag == "tr":
            self._end_row()

    def handle_data(self, data):
        if self._field is not None:
            self._buf.append(data)

    def _end_cell(self):
        if self._field is not None and self._row is not None:
            self._row[self._field] = "".join(self._buf).strip()
        self._field, self._buf = None, []

    def _end_row(self):
        self._end_cell()
        if self._row is not None:
            self.records.append(self._row)
        self._row = None


@register("html")
def fetch_html(source: str, url: str, ctx: FetchContext) -> FetchResult:
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
        parser = ListingParser()
        parser.feed(response.text)
        parser.close()
        if not parser.found_table:
            raise SourceError.at(source, page_url, "no listing table found "
                                                   "(expected <table class=\"listing\">)")
        records.extend(parser.records)
        page_url = urljoin(str(response.url), parser.next_href) if parser.next_href else None
    return FetchResult(source=source, url=url, records=records,
                       content_sha256=sha256_of(bodies), pages=len(bodies))
