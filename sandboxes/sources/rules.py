"""Scrapers configured by a seed: a `ScrapeRule` says where a site keeps its rows and fields.

Contract: `scrape(source, url, rule, ctx) -> FetchResult` reads every page of `url` the rule
describes and returns one record per row, keyed exactly by `rule.fields`.

  kind "api"   GET JSON; `rows` is a dotted path to the list of row objects ("" = the body
               is the list; a numeric part indexes a list); each field is a dotted path
               inside the row ("" = the field's own name). Values keep their JSON types.
               With no fields, each record is the whole row object.
  kind "html"  GET HTML (parsed by the standard library's parser through BeautifulSoup, so
               no <tbody> is invented the way a browser would); `rows` is a CSS selector
               matching one element per row; each field is a CSS selector inside the row,
               "sel@attr" for an attribute instead of the text, "@attr" for the row's own
               attribute, "" for the row's own text. Text is whitespace-stripped, attribute
               values are verbatim; every value is a string.
  kind "js"    as "html", but the page is rendered in ctx's shared headless Chromium first:
               after navigating (with ctx's retries) it waits up to ctx.timeout_s until the
               rows selector matches and the match count holds still for one 20 ms poll,
               or until the page marks itself done with a `data-ready` attribute on <html>
               (the way a page with no rows says it is finished); then the rendered DOM
               is read like "html".

A field spec ending in "?" is optional: None when it matches nothing. A required field that
matches nothing is a SourceError naming the field and the page URL.

Paging, at most `max_pages` requests in all (the empty page that ends page_param paging
included): with `next`, follow the next-page URL (api: a dotted path, null/missing/"" =
last page; html/js: a CSS selector of the link, its href, or "sel@attr" for another
attribute; no link or no href = last page), relative URLs resolved, fragments dropped, a
URL already read is a loop. With `page_param`, set that query parameter to first_page,
first_page + 1, ... until a page has no rows; a page whose rows equal the previous page's
means the parameter is ignored. With neither, one page. Every failure (network, HTTP
status, invalid JSON, a rows path that is not a list, a non-object row, a loop, too many
pages, a render timeout, an invalid rule) is a one-line SourceError naming source and URL.
`validate_rule(rule)` answers None or the reason a rule is unusable, without any I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urldefrag, urlencode, urljoin, urlsplit, urlunsplit

from envfactory.sandboxes.sources.base import FetchContext, FetchResult, SourceError, sha256_of

__all__ = ["RULE_KINDS", "READY_ATTRIBUTE", "ScrapeRule", "validate_rule", "scrape"]

RULE_KINDS = ("api", "html", "js")
READY_ATTRIBUTE = "data-ready"

# "sel@attr": the attribute name must end the spec, so an "@" inside a quoted attribute
# value of the selector (a[href^="mailto:x@y"]) is left alone.
_ATTR_SUFFIX = re.compile(r"(?P<sel>.*?)@(?P<attr>[A-Za-z_:][-\w:.]*)", re.ASCII)
_MISSING = object()

# True once the rows exist and their count held still for one poll (a list appended over
# several ticks is read whole), or once the page says it is done. A selector the browser
# rejects (a parser-only extension) falls back to the document having loaded.
_ROWS_SETTLED = """
([sel, ready]) => {
  if (document.documentElement.hasAttribute(ready)) return true;
  let n;
  try { n = document.querySelectorAll(sel).length; }
  catch (e) { return document.readyState === 'complete'; }
  const prev = window.__scrapeRuleRows;
  window.__scrapeRuleRows = n;
  return n > 0 && n === prev;
}
"""


@dataclass(frozen=True)
class ScrapeRule:
    kind: str                   # "api", "html" or "js"
    rows: str                   # api: dotted path to the row list; html/js: CSS selector
    fields: dict[str, str] = field(default_factory=dict)  # output field -> path / selector
    next: str | None = None     # api: dotted path to the next URL; html/js: link selector
    page_param: str | None = None  # query parameter counted up from first_page instead
    first_page: int = 1
    max_pages: int = 200


@dataclass(frozen=True)
class _Field:
    name: str
    where: str             # api: dotted path; html/js: CSS selector, "" = the row itself
    attr: str | None       # html/js: attribute to read instead of the text
    optional: bool


@dataclass(frozen=True)
class _Page:
    records: list[dict]
    next_url: str | None
    body: bytes


def _split_attr(spec: str) -> tuple[str, str | None]:
    m = _ATTR_SUFFIX.fullmatch(spec)
    return (m["sel"].strip(), m["attr"]) if m else (spec.strip(), None)


def _parse_field(name: str, spec: str, kind: str) -> _Field:
    optional = spec.endswith("?")
    body = spec[:-1] if optional else spec
    if kind == "api":
        return _Field(name, body or name, None, optional)
    selector, attr = _split_attr(body)
    return _Field(name, selector, attr, optional)


# -- validation -----------------------------------------------------------------------

def _css_problem(what: str, selector: str) -> str | None:
    import soupsieve

    try:
        soupsieve.compile(selector)
    except soupsieve.SelectorSyntaxError as exc:
        return f"{what}: bad CSS selector {selector!r}: {str(exc).splitlines()[0]}"
    return None


def _path_problem(what: str, path: str) -> str | None:
    if path and any(not part for part in path.split(".")):
        return f"{what}: bad dotted path {path!r} (empty part)"
    return None


def _shape_problem(rule: ScrapeRule) -> str | None:
    if rule.kind not in RULE_KINDS:
        return f"unknown kind {rule.kind!r}; expected one of {', '.join(RULE_KINDS)}"
    if not isinstance(rule.rows, str):
        return f"rows must be a string, got {type(rule.rows).__name__}"
    if not isinstance(rule.fields, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in rule.fields.items()):
        return "fields must map non-empty field names to strings"
    if rule.next is not None and rule.page_param is not None:
        return "give either next or page_param, not both"
    for name in ("next", "page_param"):
        value = getattr(rule, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            return f"{name} must be a non-empty string or None"
    for name, low in (("first_page", 0), ("max_pages", 1)):
        value = getattr(rule, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"{name} must be an integer >= {low}, got {value!r}"
    return None


def validate_rule(rule: ScrapeRule) -> str | None:
    """None if `rule` is usable, else a one-line reason."""
    problem = _shape_problem(rule)
    if problem is not None:
        return problem
    if rule.kind == "api":
        checks = [_path_problem("rows", rule.rows), _path_problem("next", rule.next or "")]
        checks += [_path_problem(f"field {n!r}", _parse_field(n, s, "api").where)
                   for n, s in rule.fields.items()]
        return next((c for c in checks if c), None)
    if not rule.rows.strip():
        return f"rows must be a CSS selector for kind {rule.kind!r}, got an empty string"
    if not rule.fields:
        return f"kind {rule.kind!r} needs at least one field"
    selectors = [("rows", rule.rows)] + ([("next", _split_attr(rule.next)[0])] if rule.next else [])
    selectors += [(f"field {n!r}", _parse_field(n, s, rule.kind).where)
                  for n, s in rule.fields.items()]
    return next((p for what, sel in selectors if sel and (p := _css_problem(what, sel))), None)


# -- api --------------------------------------------------------------------------------

def _walk(doc: Any, path: str) -> Any:
    """The value at dotted `path` in `doc`, or _MISSING."""
    if not path:
        return doc
    for part in path.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
    return doc


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
               int: "a number", float: "a number", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _api_record(source: str, url: str, row: dict, i: int, fields: list[_Field]) -> dict:
    if not fields:
        return row
    record = {}
    for f in fields:
        value = _walk(row, f.where)
        if value is _MISSING:
            if not f.optional:
                raise SourceError.at(source, url, f"field {f.name!r}: path {f.where!r} "
                                                  f"not found in row {i}")
            value = None
        record[f.name] = value
    return record


def _read_api(source: str, url: str, rule: ScrapeRule, fields: list[_Field],
              ctx: FetchContext) -> _Page:
    response = ctx.get(source, url)
    try:
        doc = json.loads(response.content)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise SourceError.at(source, url, f"invalid JSON: {exc}") from exc
    rows = _walk(doc, rule.rows)
    if not isinstance(rows, list):
        got = "nothing" if rows is _MISSING else _json_type(rows)
        raise SourceError.at(source, url, f"rows path {rule.rows!r} holds {got}, not a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SourceError.at(source, url, f"row {i} is {_json_type(row)}, not an object")
    records = [_api_record(source, url, row, i, fields) for i, row in enumerate(rows)]
    nxt = _walk(doc, rule.next) if rule.next else None
    nxt = None if nxt is _MISSING or nxt == "" else nxt
    if nxt is not None and not isinstance(nxt, str):
        raise SourceError.at(source, url, f"next path {rule.next!r} holds {_json_type(nxt)}, "
                                          "not a URL")
    return _Page(records, _resolve(str(response.url), nxt), response.content)


# -- html and js ------------------------------------------------------------------------

def _resolve(base: str, href: str | None) -> str | None:
    href = href.strip() if href else ""
    return urldefrag(urljoin(base, href)).url if href else None


def _html_value(row: Any, f: _Field) -> Any:
    target = row.select_one(f.where) if f.where else row
    if target is None:
        return _MISSING
    if f.attr is not None:
        return target.get(f.attr, _MISSING)
    return target.get_text().strip()


def _html_record(source: str, url: str, row: Any, i: int, fields: list[_Field]) -> dict:
    record = {}
    for f in fields:
        value = _html_value(row, f)
        if value is _MISSING:
            if not f.optional:
                what = f"selector {f.where!r}" if f.where else "the row element"
                what += f" (attribute {f.attr!r})" if f.attr else ""
                raise SourceError.at(source, url, f"field {f.name!r}: {what} matched nothing "
                                                  f"in row {i}")
            value = None
        record[f.name] = value
    return record


def _extract(source: str, url: str, base: str, text: str | bytes, rule: ScrapeRule,
             fields: list[_Field], body: bytes) -> _Page:
    from bs4 import BeautifulSoup

    # multi_valued_attributes=None: "@class" reads "f-x null" as the browser's getAttribute does
    soup = BeautifulSoup(text, "html.parser", multi_valued_attributes=None)
    records = [_html_record(source, url, row, i, fields)
               for i, row in enumerate(soup.select(rule.rows))]
    nxt = None
    if rule.next:
        selector, attr = _split_attr(rule.next)
        link = soup.select_one(selector)
        nxt = _resolve(base, link.get(attr or "href") if link is not None else None)
    return _Page(records, nxt, body)


def _read_html(source: str, url: str, rule: ScrapeRule, fields: list[_Field],
               ctx: FetchContext) -> _Page:
    response = ctx.get(source, url)
    # Bytes let the parser honour a <meta charset> when the HTTP header names none.
    text = response.text if response.charset_encoding else response.content
    return _extract(source, url, str(response.url), text, rule, fields, response.content)


def _wait_for_rows(source: str, url: str, rule: ScrapeRule, ctx: FetchContext, page) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        page.wait_for_function(_ROWS_SETTLED, arg=[rule.rows, READY_ATTRIBUTE], polling=20,
                               timeout=ctx.timeout_s * 1000)
    except PlaywrightTimeoutError as exc:
        raise SourceError.at(source, url, f"no row matching {rule.rows!r} rendered and the page "
                                          f"set no {READY_ATTRIBUTE} within {ctx.timeout_s:g} s"
                             ) from exc


def _read_js(source: str, url: str, rule: ScrapeRule, fields: list[_Field],
             ctx: FetchContext) -> _Page:
    # The fixed-format js scraper's navigation (retries, status check).
    from envfactory.sandboxes.sources.js import _navigate

    page = ctx.shared_page()
    try:
        _navigate(source, url, ctx, page)
        _wait_for_rows(source, url, rule, ctx, page)
        rendered, base = page.content(), page.url
    except BaseException:
        ctx.discard_page(page)  # a page left mid-error is not reused; the next fetch opens a new one
        raise
    return _extract(source, url, base, rendered, rule, fields, rendered.encode("utf-8"))


# -- paging -----------------------------------------------------------------------------

_READERS: dict[str, Callable[..., _Page]] = {"api": _read_api, "html": _read_html, "js": _read_js}


def _with_param(url: str, name: str, value: int) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(query + [(name, str(value))])))


def scrape(source: str, url: str, rule: ScrapeRule, ctx: FetchContext) -> FetchResult:
    """Every record of every page of `url` that `rule` describes; see the module docstring."""
    problem = validate_rule(rule)
    if problem is not None:
        raise SourceError.at(source, url, f"invalid scrape rule: {problem}")
    fields = [_parse_field(name, spec, rule.kind) for name, spec in rule.fields.items()]
    read = _READERS[rule.kind]
    records: list[dict] = []
    bodies: list[bytes] = []
    seen: set[str] = set()
    number = rule.first_page
    page_url: str | None = _with_param(url, rule.page_param, number) if rule.page_param else url
    previous: list[dict] | None = None
    while page_url is not None:
        if page_url in seen:
            raise SourceError.at(source, page_url, "pagination loops back to a page already read")
        if len(bodies) >= rule.max_pages:
            raise SourceError.at(source, url, f"more than {rule.max_pages} pages; "
                                              "refusing to go on")
        seen.add(page_url)
        page = read(source, page_url, rule, fields, ctx)
        bodies.append(page.body)
        if rule.page_param is None:
            records.extend(page.records)
            page_url = page.next_url
            continue
        if not page.records:
            break
        if page.records == previous:
            raise SourceError.at(source, page_url, f"page parameter {rule.page_param!r} looks "
                                                   "ignored: this page repeats the previous one")
        previous = page.records
        records.extend(page.records)
        number += 1
        page_url = _with_param(url, rule.page_param, number)
    return FetchResult(source=source, url=url, records=records,
                       content_sha256=sha256_of(bodies), pages=len(bodies))
