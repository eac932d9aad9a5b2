"""The sandbox worker: runs generated tools and verifiers on behalf of the host.

Runs inside the sandbox (a Docker container or a restricted subprocess) with the standard
library and duckdb only; it never imports the factory. Protocol: one JSON request per line
on stdin, one JSON response per line on stdout, in order.

    {"op": "ping"}
    {"op": "verify", "verifier": REL, "db": REL, "answers": [ANSWER, ...]}
    {"op": "tools", "tools": REL, "db": REL, "calls": [{"name": N, "arguments": {...}}, ...]}

REL paths are relative to the sandbox root (argv[1]). Set-up (importing the module, opening
the database) runs under its own alarm (argv[4]) and is followed by an interim line
{"loaded": true} before the calls start. Every call runs under a wall-clock alarm; after a call times out the rest of its batch is skipped. Each result is either
{"ok": VALUE} or {"error": "..."}. A response carries "tainted": true when generated code
left processes or threads behind: the host then discards this worker.
"""

import gc
import importlib.util
import json
import os
import signal
import sys
import threading

sys.dont_write_bytecode = True  # never leave __pycache__ in a (read-only or hashed) bundle
ROOT = sys.argv[1] if len(sys.argv) > 1 else "/bundle"
CALL_TIMEOUT_S = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
RLIMITS = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}  # e.g. {"AS": bytes}: set before any generated code
SETUP_TIMEOUT_S = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0  # importing a module, opening a database
PID = os.getpid()
MAX_OPEN_DBS = 4  # databases (with their modules) kept open; older ones are closed
_modules = {}
_connections = {}
_recent = []  # databases, most recently used last


class CallTimeout(BaseException):
    """Raised by the alarm; a BaseException so that `except Exception` in generated code
    cannot swallow it."""


def _alarm(signum, frame):
    raise CallTimeout()


def _path(rel):
    full = os.path.realpath(os.path.join(ROOT, rel))
    if not (full == ROOT or full.startswith(os.path.realpath(ROOT) + os.sep)):
        raise ValueError(f"path escapes the sandbox root: {rel}")
    return full


def _touch(db_rel):
    """Mark a database as used; close the least recently used beyond MAX_OPEN_DBS, with
    every module bound to it (each holds its own connections and caches)."""
    if db_rel in _recent:
        _recent.remove(db_rel)
    _recent.append(db_rel)
    while len(_recent) > MAX_OPEN_DBS:
        old = _recent.pop(0)
        for key in [k for k in _modules if k[1] == old]:
            del _modules[key]
        con = _connections.pop(old, None)
        if con is not None:
            con.close()
        gc.collect()


def _module(rel, db_rel):
    _touch(db_rel)
    key = (rel, db_rel)
    if key not in _modules:
        spec = importlib.util.spec_from_file_location(f"generated_{len(_modules)}", _path(rel))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if hasattr(mod, "DB_PATH"):
            mod.DB_PATH = _path(db_rel)
        _modules[key] = mod
    return _modules[key]


def _connection(db_rel):
    if db_rel not in _connections:
        import duckdb

        con = duckdb.connect(_path(db_rel), read_only=True)  # the generated tools open it the same way
        con.execute("SET threads TO 1")
        _connections[db_rel] = con
    return _connections[db_rel]


def _children():
    n = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                n += len(f.read().split())
    except OSError:
        pass
    return n


def _stray_threads():
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and not isinstance(t, threading.Timer) and t.is_alive()]


def _guarded(fn, limit_s=None):
    """Run fn() under the alarm (limit_s, by default the per-call budget); return
    ({"ok": value} | {"error": ...}, timed_out)."""
    limit_s = CALL_TIMEOUT_S if limit_s is None else limit_s
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        value = fn()
        out = {"ok": value}
        timed_out = False
    except CallTimeout:
        out = {"error": f"timeout: the call ran past {limit_s:g} s"}
        timed_out = True
    except MemoryError:
        out = {"error": "memory: the call ran out of memory"}
        timed_out = False
    except BaseException as e:  # generated code may raise anything, SystemExit included
        out = {"error": f"{type(e).__name__}: {e}"[:500]}
        timed_out = False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if os.getpid() != PID:  # a child forked by generated code: it must never answer
        os._exit(0)
    try:
        json.dumps(out)
    except (TypeError, ValueError):
        out = {"error": f"result is not JSON-serialisable: {type(out.get('ok')).__name__}"}
    return out, timed_out


def _batch(items, run_one):
    results = []
    for i, item in enumerate(items):
        out, timed_out = _guarded(lambda: run_one(item))
        results.append(out)
        if timed_out:
            results += [{"error": "skipped: an earlier call in this batch timed out"}] * (len(items) - i - 1)
            break
    return results


def _setup(fn, what, n):
    """Run a set-up step (import a generated module, open a database) under its own, larger
    budget: a cold start (the first `import duckdb` in a fresh container on a busy host) can
    take seconds that no single call should. (its value, None), or (None, a response
    failing all n calls)."""
    box = []
    out, _ = _guarded(lambda: box.append(fn()), SETUP_TIMEOUT_S)
    if "error" in out:
        return None, {"results": [{"error": f"{what}: {out['error']}"}] * n}
    return box[0], None


_OUT = sys.stdout  # the protocol stream; main() points sys.stdout at stderr


def _say(msg):
    """An interim line: set-up is done and the calls start (the host's call deadline starts)."""
    if os.getpid() != PID:
        os._exit(0)
    _OUT.write(json.dumps(msg) + "\n")
    _OUT.flush()


def handle(req):
    op = req.get("op")
    if op == "ping":
        return {"ok": True}
    if op == "verify":
        db, n = req["db"], len(req["answers"])
        mod, failed = _setup(lambda: _module(req["verifier"], db), "load", n)
        if failed:
            return failed
        con, failed = _setup(lambda: _connection(db), "database", n)
        if failed:
            return failed
        _say({"loaded": True})
        return {"results": _batch(req["answers"], lambda a: mod.verify(a, con))}
    if op == "tools":
        mod, failed = _setup(lambda: _module(req["tools"], req["db"]), "load", len(req["calls"]))
        if failed:
            return failed
        _say({"loaded": True})

        def one(call):
            tools = getattr(mod, "TOOLS", None)
            fn = tools.get(call["name"]) if isinstance(tools, dict) else None
            if fn is None:
                raise LookupError(f"no tool named {call['name']!r}")
            return fn(**call.get("arguments", {}))

        return {"results": _batch(req["calls"], one)}
    return {"error": f"unknown op {op!r}"}


def _apply_rlimits():
    import resource

    for name, value in RLIMITS.items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))


def main():
    _apply_rlimits()
    signal.signal(signal.SIGALRM, _alarm)
    out = _OUT
    sys.stdout = sys.stderr  # generated code that prints must not corrupt the protocol
    for line in sys.stdin:
        try:
            req = json.loads(line)
            resp = handle(req)
        except Exception as e:
            resp = {"error": f"bad request: {type(e).__name__}: {e}"}
        if os.getpid() != PID:
            os._exit(0)
        if _children() or _stray_threads():
            resp["tainted"] = True
        out.write(json.dumps(resp) + "\n")
        out.flush()
        if resp.get("tainted"):
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
