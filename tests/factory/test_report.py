"""`factory report`: the HTML page about a run, on small runs written here in the shape of a
real `factory generate --out` (batch.json, per environment manifest.json and
tasks/tasks.jsonl, as in a trip_planning run), then opened in real Chromium: no console
errors, no requests, every chart drawn (its screenshot is not blank), one line per ladder."""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from envfactory.factory.errors import UsageError
from envfactory.factory.report import ReportError, main, reason_category, render_report

LEVELS = 6
EVIL = '<script>alert("x")</script>'

# constraint kinds by level: L0 the base task, then one move per level; env 0 also takes
# distinct_count at L4 (so that kind's count differs from a multiple of the env count)
BASE = [("all_different", "all_different_hotel", {"slot": "hotel"}),
        ("all_different", "all_different_restaurant", {"slot": "restaurant"}),
        ("all_different", "all_different_attraction", {"slot": "attraction"}),
        ("total_budget", "total_budget", {"costs": {"attraction": "ticket_price", "hotel": "price_per_night",
                                                    "restaurant": "avg_cost"}, "max": 218})]
MOVES = {1: ("all_different", "all_different_city", {"slot": "city"}),
         2: ("conditional_budget", "conditional_budget", {"day": 2, "if_slot": "hotel", "threshold": 80,
                                                          "max": 120}),
         3: ("aggregate", "aggregate_attraction_rating", {"slot": "attraction", "column": "rating", "fn": "avg",
                                                          "op": ">=", "value": 4.1})}
# with 3 environments: the tasks using each kind, over all levels and at L3
KINDS_3 = {"all_different": 18, "total_budget": 18, "conditional_budget": 12, "aggregate": 9, "distinct_count": 2}


def _constraints(env: int, level: int) -> list[dict]:
    cs = list(BASE) + [MOVES[lv] for lv in sorted(MOVES) if lv <= level]
    if env == 0 and level >= 4:
        cs.append(("distinct_count", "distinct_restaurant_cuisine", {"slot": "restaurant", "column": "cuisine",
                                                                      "min": 3}))
    return [{"kind": k, "name": n, "params": p} for k, n, p in cs]


def _task(env_id: str, level: int, env: int, count: int, calls: int) -> dict:
    prompt = f"Plan a 3-day trip starting from {env_id}.\n\nRequirements:\n1. ..."
    return {
        "task_id": f"{env_id}-L{level}", "env_id": env_id, "seed": "trip_planning", "level": level,
        "prompt": prompt, "messages": [{"role": "system", "content": "You plan trips."},
                                       {"role": "user", "content": prompt}],
        "constraints": _constraints(env, level),
        "reference_answer": {"days": [{"attraction": "A1-01", "city": "1", "hotel": "H1-01", "restaurant": "R1-01"}]},
        "solution_count": count, "solution_count_capped": False,
        "tools": ["list_cities", "search_hotels"], "tools_added": [], "move": "base task" if level == 0 else
        f"add {MOVES.get(level, ('tighten total_budget',))[0]}",
        "reference_tool_calls": [{"arguments": {}, "name": "list_cities"}] * calls, "min_tool_calls": calls,
        "greedy_solves": level < 3, "verifier": f"verifiers/{env_id}-L{level}.py",
    }


def _agent(kind: str, reasons: list[str], check_reasons: list[str]) -> dict:
    a = {"check_reasons": check_reasons, "checks_rejected": len(check_reasons), "checks_tested": 2 * len(check_reasons),
         "data": {"columns": {}, "tables": ["cities", "airports", "hotels", "restaurants", "attractions"]},
         "kind": kind, "model": None if kind == "specialist" else "qwen-test", "reasons": reasons,
         "rejected": len(reasons)}
    if kind != "specialist":
        a |= {"proposals": 10, "fallbacks": 0, "malformed": 1, "data_defaults": 0, "tools_written": 0,
              "tools_rejected": 0, "prompt_tokens": 1000, "completion_tokens": 200, "requests": 12}
    return a


def make_run(root: Path, n_envs: int = 3, kind: str = "specialist", evil: bool = False,
             reasons: dict[int, list[str]] | None = None, batch: bool = True) -> Path:
    """A run directory shaped like `factory generate --out` (tools/, verifiers/ and db/ left out:
    the report reads none of them)."""
    root.mkdir(parents=True, exist_ok=True)
    envs = []
    for i in range(n_envs):
        name = f"trip_planning-s7-{i:03d}-town{i}"
        env_id = name + (EVIL if evil and i == 1 else "")
        counts = [max(1, int(2000 * (0.45 + 0.1 * i) ** lv)) for lv in range(LEVELS)]
        calls = [7 + 3 * (lv // 2) + i for lv in range(LEVELS)]
        tools = ["list_cities", "search_hotels", "search_restaurants", "search_attractions"][: 2 + i % 3]
        agent = _agent(kind, (reasons or {}).get(i, []), (reasons or {}).get(-1, []) if i == 0 else [])
        d = root / name
        (d / "tasks").mkdir(parents=True)
        (d / "tools").mkdir()
        (d / "tools" / "tool_schemas.json").write_text(json.dumps([
            {"function": {"description": f"{t}.", "name": t, "parameters": {"additionalProperties": False,
                                                                           "properties": {}, "required": [],
                                                                           "type": "object"}},
             "type": "function"} for t in tools]))
        with open(d / "tasks" / "tasks.jsonl", "w", encoding="utf-8") as f:
            for lv in range(LEVELS):
                f.write(json.dumps(_task(env_id, lv, i, counts[lv], calls[lv]), sort_keys=True) + "\n")
        (d / "manifest.json").write_text(json.dumps({
            "agent": agent, "env_id": env_id, "files": {"tasks/tasks.jsonl": "0" * 64}, "format_version": 1,
            "generator": {"git_sha": "2b23055715322823e147a0b375072255fe69338c", "name": "envfactory",
                          "packages": {"duckdb": "2.0.1"}, "version": "0.1.0"},
            "levels": {str(lv): {"capped": False, "min_tool_calls": calls[lv], "solution_count": counts[lv],
                                 "tasks": 1} for lv in range(LEVELS)},
            "run_seed": 7, "seed": "trip_planning", "seed_sha256": "a" * 64}, indent=2, sort_keys=True))
        envs.append({"agent": agent, "capped": [False] * LEVELS, "country": "Testland", "counts": counts,
                     "env_id": env_id, "levels": LEVELS, "origin": f"Town{i}", "path": name, "tool_calls": calls,
                     "tools": tools})
    if batch:
        totals = {"kind": kind, "model": envs[0]["agent"]["model"], "proposals": 10 * n_envs if kind != "specialist"
                  else 0, "rejected": sum(e["agent"]["rejected"] for e in envs), "checks_rejected": 0,
                  "checks_tested": 0}
        (root / "batch.json").write_text(json.dumps({
            "agent": totals, "envs": envs, "run_seed": 7, "seed": "trip_planning",
            "replaced": [{"origin": "Kira", "reason": "Kira: no harder solvable task found after level 4"}]},
            indent=2, sort_keys=True))
    return root


def add_results(run: Path, failing_task: bool = True) -> None:
    """validation.json and solve-greedy.json as `factory validate` and `factory solve -k 2` write them."""
    envs = []
    for d in sorted(p for p in run.iterdir() if (p / "manifest.json").is_file()):
        tasks = []
        for lv in range(LEVELS):
            bad = failing_task and d.name.endswith("000-town0") and lv == 5
            tasks.append({"accepted": 25, "alternatives": 20, "cases": 85, "constraints_covered": "4/4",
                          "failures": ["verifier ... accepts 1 of 60 wrong answers (unsound): violate:x"] if bad
                          else [], "feasible": 25, "level": lv, "mutants": 60, "rejected": 59 if bad else 60,
                          "task_id": f"{d.name}-L{lv}", "tool_calls": 10, "tool_failures": 0,
                          "verifier": f"verifiers/{d.name}-L{lv}.py"})
        envs.append({"accepted": 150, "env_id": d.name, "error": None, "failures": [f for t in tasks
                                                                                  for f in t["failures"]],
                     "feasible": 150, "manifest": [], "mutants": 360, "path": str(d), "rejected": 359,
                     "tasks": tasks})
    (run / "validation.json").write_text(json.dumps({
        "backend": "docker", "ok": not failing_task, "path": str(run), "seconds": 8.9, "tool_calls": 180,
        "totals": {}, "verifier_calls": 1530, "verifier_calls_per_s": 171.9, "envs": envs}))
    levels = {str(lv): {"min_tool_calls": 10.0, "pass@1": round(1 - lv / 6, 4), "pass@2": round(1 - lv / 8, 4),
                        "tasks": 3, "tokens": 0.0, "tool_calls": 22.0} for lv in range(LEVELS)}
    (run / "solve-greedy.json").write_text(json.dumps({"agent": "greedy", "k": 2, "levels": levels, "seconds": 4.2,
                                                      "tasks": []}))


class Elements(HTMLParser):
    """Every element's (tag, attrs, section id), and the text inside each <title>."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, dict, str | None]] = []
        self.section = None
        self.titles: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("section", "header") and a.get("id"):
            self.section = a["id"]
        self.found.append((tag, a, self.section))
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.titles.append(data)

    def tagged(self, tag: str, cls: str | None = None, section: str | None = None) -> list[dict]:
        return [a for t, a, s in self.found if t == tag and (cls is None or cls in (a.get("class") or "").split())
                and (section is None or s == section)]


def parse(html: str) -> Elements:
    p = Elements()
    p.feed(html)
    return p


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


# ---- the page's content --------------------------------------------------------------------

def test_one_ladder_line_per_environment_with_its_counts(run, tmp_path):
    out = render_report(run, tmp_path / "r.html")
    assert out == tmp_path / "r.html"
    page = parse(out.read_text(encoding="utf-8"))
    ladders = page.tagged("polyline", "ladder")
    assert len(ladders) == 3
    batch = json.loads((run / "batch.json").read_text())
    assert [a["data-env"] for a in ladders] == [e["env_id"] for e in batch["envs"]]
    # the points fall level by level, as the counts do (SVG y grows downwards)
    for a in ladders:
        ys = [float(p.split(",")[1]) for p in a["points"].split()]
        assert len(ys) == LEVELS and all(b > c for b, c in zip(ys[1:], ys)), ys


def test_constraint_kinds_counted_once_per_task(run, tmp_path):
    page = parse(render_report(run, tmp_path / "r.html").read_text(encoding="utf-8"))
    bars = {a["data-label"]: int(a["data-value"]) for a in page.tagged("rect", "bar", "constraints")}
    assert bars == KINDS_3
    cells = {(a["data-label"], a["data-col"]): int(a["data-value"]) for a in page.tagged("rect", "cell")}
    assert cells[("aggregate", "L2")] == 0 and cells[("aggregate", "L3")] == 3
    assert cells[("distinct_count", "L4")] == 1 and cells[("all_different", "L0")] == 3
    assert sum(v for (k, _), v in cells.items() if k == "conditional_budget") == KINDS_3["conditional_budget"]


def test_tools_and_reference_calls(run, tmp_path):
    page = parse(render_report(run, tmp_path / "r.html").read_text(encoding="utf-8"))
    bars = [(a["data-label"], a["data-value"]) for a in page.tagged("rect", "bar", "tools")]
    # tools per environment 2, 3, 4 -> one environment each; then the mean calls per level
    assert bars[:3] == [("2", "1"), ("3", "1"), ("4", "1")]
    assert ("L5", "14") in bars  # levels 4-5 make 13 + i calls for env i = 0, 1, 2
    assert ("list_cities", "3") in bars and ("search_attractions", "1") in bars


def test_text_from_the_run_is_escaped(tmp_path):
    run = make_run(tmp_path / "run", kind="openai", evil=True,
                   reasons={0: [f"add model:attribute x: malformed: {EVIL}"]})
    html = render_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;alert(" in html
    page = parse(html)
    assert page.tagged("polyline", "ladder")[1]["data-env"].endswith(EVIL)  # the attribute holds the id, unharmed


def test_rejected_proposals_grouped_by_reason(tmp_path):
    reasons = {0: ["add model:attribute a: not harder: it keeps all 1578 plans of level 0",
                   "add model:aggregate b: too hard: it leaves 2 plans, and 3 more levels must each remove some"],
               1: ["tighten model:total_budget c: not harder: it keeps all 900 plans of level 2",
                   "data choice: none usable; the whole catalog is loaded"],
               2: ["add model:attribute d: not harder: it keeps all 12 plans of level 4"],
               -1: ["check_x: it raises on the plan {'days': [{'city': '1'}]}: ZeroDivisionError: division by zero"]}
    run = make_run(tmp_path / "run", kind="openai", reasons=reasons)
    page = parse(render_report(run, tmp_path / "r.html").read_text(encoding="utf-8"))
    bars = {a["data-label"]: int(a["data-value"]) for a in page.tagged("rect", "bar", "rejections")}
    assert bars == {"proposal: not harder": 3, "proposal: too hard": 1,
                    "proposal: none usable; the whole catalog is loaded": 1,
                    "written check: it raises on the plan {…}": 1}


def test_reason_category():
    assert reason_category("add model:attribute x: not harder: it keeps all 1578 plans of level 0") == "not harder"
    assert reason_category("add model:x y: its check fails on this environment's plans: ValueError: z") == \
        "its check fails on this environment's plans"
    assert reason_category("plain words 12") == "plain words N"


def test_sections_without_data_say_what_to_run(run, tmp_path):
    html = render_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "no validation results: run <code>factory validate RUN</code>" in html
    assert "no solving results: run <code>factory solve RUN" in html
    assert "no model agent in this run" in html
    assert "no generation timings" in html
    assert "not recorded in batch.json" in html  # the wall time


def test_validation_and_pass_at_k(run, tmp_path):
    add_results(run)
    page = parse(render_report(run, tmp_path / "r.html").read_text(encoding="utf-8"))
    val = {(a["data-label"], a["class"]): int(a["data-value"]) for a in page.tagged("rect", "bar", "validation")}
    assert val[("tasks: sound", "bar passed")] == 17 and val[("tasks: sound", "bar failed")] == 1
    assert val[("answers: wrong scored 0", "bar failed")] == 1
    assert val[("envs: manifest intact", "bar passed")] == 3
    series = {a["data-series"]: a["points"] for a in page.tagged("polyline", "series", "solve")}
    assert set(series) == {"greedy pass@1", "greedy pass@2"}
    ys = [float(p.split(",")[1]) for p in series["greedy pass@1"].split()]
    assert len(ys) == LEVELS and ys == sorted(ys)  # pass@1 falls with the level: y grows
    times = {a["data-label"]: a["data-value"] for a in page.tagged("rect", "bar", "timings")}
    assert times == {"factory validate": "8.9", "factory solve --agent greedy": "4.2"}


def test_every_chart_has_a_title_axes_and_marks(run, tmp_path):
    add_results(run)
    html = render_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    svgs = re.findall(r"<svg\b.*?</svg>", html, re.S)
    assert len(svgs) == 9  # ladders, kinds, kinds by level, 3 tool charts, validation, pass@k, timings
    for svg in svgs:
        m = re.match(r'<svg class="plot[^"]*" role="img" viewBox="[^"]+"[^>]*><title>([^<]+)</title>', svg)
        assert m and m.group(1).strip(), svg[:200]
        assert svg.count('class="axis"') == 2 and svg.count("<text") >= 4
        assert re.search(r"<(polyline|rect) ", svg)
    assert not re.search(r"""(src|href)\s*=|https?://|<script|<link""", html)


def test_run_without_batch_json_reads_the_environments(run, tmp_path):
    with_batch = parse(render_report(run, tmp_path / "a.html").read_text(encoding="utf-8"))
    (run / "batch.json").unlink()
    page = parse(render_report(run, tmp_path / "b.html").read_text(encoding="utf-8"))
    # the same ladders, from the tasks' solution counts; the same tools, from tool_schemas.json
    assert [a["points"] for a in page.tagged("polyline", "ladder")] == \
        [a["points"] for a in with_batch.tagged("polyline", "ladder")]
    assert [a["data-value"] for a in page.tagged("rect", "bar", "tools")] == \
        [a["data-value"] for a in with_batch.tagged("rect", "bar", "tools")]


def test_a_run_in_progress_reads_its_journal(run, tmp_path):
    batch = json.loads((run / "batch.json").read_text())
    (run / "batch.json").unlink()
    rows = [{"agent": {"kind": "specialist", "model": None}, "event": "run", "format": 1, "run_seed": 7,
             "seed": "trip_planning", "seed_sha256": "a" * 64},
            {"event": "env", "i": 0, "status": "ok", "summary": batch["envs"][0]},
            {"event": "env", "i": 1, "status": "skip", "reason": "Kira: no harder solvable task found after level 4"},
            {"event": "env", "i": 2, "status": "ok", "summary": batch["envs"][1]}]
    (run / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"event": "env", "i"')
    html = render_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    page = parse(html)
    # two journaled environments, and the third directory, in place without its journal line
    assert [a["data-env"] for a in page.tagged("polyline", "ladder")] == [e["env_id"] for e in batch["envs"]]
    assert "this run has not finished" in html and "Kira: no harder solvable task" in html


def test_default_output_and_a_single_environment(run, tmp_path):
    assert render_report(run) == run / "report.html"
    env = run / "trip_planning-s7-001-town1"
    before = sorted(p.name for p in env.rglob("*"))
    out = render_report(env)
    assert out == run / "trip_planning-s7-001-town1.report.html"  # beside it: its manifest stays whole
    assert sorted(p.name for p in env.rglob("*")) == before
    assert len(parse(out.read_text(encoding="utf-8")).tagged("polyline", "ladder")) == 1


# ---- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["empty", "missing", "file"])
def test_not_a_run_is_one_clear_error(tmp_path, what):
    path = tmp_path / "x"
    if what == "empty":
        path.mkdir()
    elif what == "file":
        path.write_text("{}")
    with pytest.raises(ReportError, match="not a (generation run|directory)") as err:
        render_report(path)
    assert isinstance(err.value, UsageError) and "\n" not in str(err.value)
    assert not (path / "report.html").exists()


def test_main_prints_the_path_or_one_error_line(run, tmp_path, capsys):
    assert main([str(run), "--out", str(tmp_path / "o" / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o" / "r.html")
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a generation run" in lines[0]
    assert "Traceback" not in cap.err and cap.out == ""


# ---- in a real browser -------------------------------------------------------------------------

def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit, non-interlaced RGB or RGBA PNG, the
    kind Chromium's screenshots are (PNG spec, sections 4 and 9: filters 0-4 per scanline)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert depth == 8 and interlace == 0 and ctype in (2, 6), (depth, ctype, interlace)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    prev = bytes(stride)
    rows = []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((x + b) & 255 for x, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a, b = (line[i - bpp], prev[i]) if i >= bpp else (0, prev[i])
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = bytes(line)
        rows.append(prev if bpp == 3 else bytes(v for j, v in enumerate(prev) if j % 4 != 3))
    return w, h, rows


def inked(png: bytes) -> tuple[float, float]:
    """(share of pixels unlike the background, share of the ladders' blue), the background
    being the most common colour."""
    w, h, rows = png_pixels(png)
    px = [r[i:i + 3] for r in rows for i in range(0, len(r), 3)]
    bg = Counter(px).most_common(1)[0][0]
    far = sum(1 for p in px if sum(abs(x - y) for x, y in zip(p, bg)) > 30)
    blue = sum(1 for p in px if p[2] > p[0] + 40 and p[2] > p[1] + 10)
    return far / len(px), blue / len(px)


def test_page_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    from envfactory.sandboxes.sources.base import CHROMIUM_ARGS, DEFAULT_CHROMIUM

    n_envs = 12
    run = make_run(tmp_path / "run", n_envs=n_envs, kind="openai", evil=True,
                   reasons={0: ["add model:attribute a: not harder: it keeps all 1578 plans of level 0"],
                            3: [f"add model:attribute b: malformed: {EVIL}"]})
    add_results(run)
    out = render_report(run, tmp_path / "report.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=DEFAULT_CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            messages, errors, requests, dialogs = [], [], [], []
            page.on("console", lambda m: messages.append((m.type, m.text)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            assert page.locator("svg .ladder").count() == n_envs
            plots = page.locator("svg.plot")
            assert plots.count() == 10  # the 9 of test_every_chart_..., and the rejections
            shots = {}
            for i in range(plots.count()):
                el = plots.nth(i)
                title = el.locator("title").first.text_content()
                box = el.bounding_box()
                assert box and box["width"] > 300 and box["height"] > 100, (title, box)
                shots[title] = inked(el.screenshot())
            # the escaped id shows as text (in its ladder's tooltip); nothing ran
            assert EVIL in page.locator("svg .ladder title").nth(1).text_content()
        finally:
            browser.close()
    assert errors == [] and [m for m in messages if m[0] == "error"] == [] and dialogs == []
    assert requests == [out.as_uri()]  # self-contained: the page asks for nothing else
    # measured at this viewport: a chart's heading alone inks 0.3% of its pixels, heading and
    # axes 1.3%, the sparsest chart here (pass@k) 4.4%
    for title, (ink, _) in shots.items():
        assert ink > 0.02, f"{title}: only {ink:.2%} of its pixels are drawn"
    ladder_ink, ladder_blue = next(v for t, v in shots.items() if t.startswith("Difficulty ladders"))
    assert ladder_blue > 0.01, f"the ladder lines cover only {ladder_blue:.2%} of the chart"


def test_damaged_files_are_reported_not_fatal(run, tmp_path):
    tasks = run / "trip_planning-s7-002-town2" / "tasks" / "tasks.jsonl"
    tasks.write_text(tasks.read_text() + "{not json\n" + json.dumps({"level": "x", "constraints": 3}) + "\n")
    (run / "trip_planning-s7-001-town1" / "tasks" / "tasks.jsonl").unlink()
    batch = json.loads((run / "batch.json").read_text())
    batch["envs"].append("not an object")
    (run / "batch.json").write_text(json.dumps(batch))
    (run / "validation.json").write_text(json.dumps({"envs": [{"tasks": [{"rejected": "many"}]}]}))
    (run / "solve-greedy.json").write_text("{")
    html = render_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    problems = html.split('<section id="problems">')[1]
    for said in ("tasks/tasks.jsonl line 7 is not JSON", "a task record of an unexpected shape",
                 "trip_planning-s7-001-town1: no tasks/tasks.jsonl", "an environment entry that is not an object",
                 "validation.json: of an unexpected shape", "solve-greedy.json: unreadable"):
        assert said in problems, said
    page = parse(html)
    assert len(page.tagged("polyline", "ladder")) == 3  # the counts still come from batch.json
    # the constraint mix counts the 12 tasks that were read: 2 environments x 6 levels
    bars = {a["data-label"]: int(a["data-value"]) for a in page.tagged("rect", "bar", "constraints")}
    assert bars["all_different"] == 12
    assert "1 environment without tasks/tasks.jsonl" in html


def test_wall_time_when_batch_json_records_it(run, tmp_path):
    batch = json.loads((run / "batch.json").read_text())
    (run / "batch.json").write_text(json.dumps(batch | {"seconds": 36.0, "executor": "local"}))
    html = render_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "36.0 s (5.0 environments per minute)" in html  # 3 environments in 36 s
    times = {a["data-label"]: a["data-value"] for a in parse(html).tagged("rect", "bar", "timings")}
    assert times == {"generation (wall)": "36"}
    assert "no generation timings" not in html


@pytest.mark.parametrize("n_envs, medians", [(3, 0), (6, 1)])
def test_the_median_ladder_only_over_enough_environments(tmp_path, n_envs, medians):
    run = make_run(tmp_path / "run", n_envs=n_envs)
    page = parse(render_report(run, tmp_path / "r.html").read_text(encoding="utf-8"))
    assert len(page.tagged("polyline", "ladder")) == n_envs
    assert len(page.tagged("polyline", "median")) == medians
