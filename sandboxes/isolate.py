"""Run generated code (tools and verifiers) away from the host: a warm pool of sandboxes.

Each sandbox is one long-lived worker process (`sandboxes/runner/worker.py`) that loads
generated modules from the mounted root and answers batched requests over a pipe, so one
container serves thousands of verifier calls and start-up is paid once per worker.

Docker backend (the default when a daemon answers). Each worker is a container of the
locally built image (`sandboxes.image`) run with:
  - no network at all (`--network none`: only a loopback interface of its own);
  - a read-only root file system, a small private /tmp, and the root being validated
    mounted read-only (the database cannot be written, even through the file);
  - a non-root user (65534), all capabilities dropped, no-new-privileges;
  - memory (RAM and swap), CPU and process-count limits; an out-of-memory kill is
    reported as such;
  - a wall-clock limit per call inside the worker (an alarm) and per batch on the host
    (the container is killed and replaced); a worker whose code left processes or
    threads behind is replaced too.
It does not isolate against kernel exploits or container escapes (the daemon runs as
root; no seccomp or user-namespace hardening beyond Docker's defaults), and CPU time is
shared with the host within the `--cpus` quota.

Local backend (the fallback where no Docker daemon answers; a warning says so). Each
worker is a subprocess with rlimits on address space, CPU time, file size and open files,
started in new network and PID namespaces when `unshare` is available and allowed (root),
and killed with its whole process group on a timeout. It does NOT isolate the file
system: generated code can read any file the host user can, and write any file the
host user can (the database is opened read-only, but the file itself is not protected).
Process counts are not limited for root. Use it for trusted bundles only.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "SandboxPool", "SandboxError", "SandboxWarning", "choose_backend"]

RUNNER = Path(__file__).resolve().parent / "runner"


class SandboxError(RuntimeError):
    pass


class SandboxWarning(UserWarning):
    pass


@dataclass(frozen=True)
class Limits:
    call_timeout_s: float = 5.0      # one verifier or tool call
    setup_timeout_s: float = 30.0    # importing one generated module or opening one database
    memory_mb: int = 512             # per worker (RAM; swap disabled)
    cpus: float = 1.0                # per worker
    pids: int = 64                   # processes and threads per worker
    batch_slack_s: float = 10.0      # host-side allowance on top of the per-call budget


def choose_backend(requested: str = "auto") -> tuple[str, str | None]:
    """("docker" | "local", reason for falling back or None)."""
    from envfactory.sandboxes.image import docker_ready

    requested = requested or "auto"
    if requested not in ("auto", "docker", "local"):
        raise SandboxError(f"unknown sandbox backend {requested!r} (choose auto, docker or local)")
    if requested == "local":
        return "local", None
    why = docker_ready()
    if why is None:
        return "docker", None
    if requested == "docker":
        raise SandboxError(f"the Docker sandbox was requested but {why}")
    return "local", why


def _sweep_exited() -> None:
    """Remove stopped sandbox containers left by a run that was killed before its cleanup
    (its workers exit when their stdin closes). Running ones belong to live pools."""
    r = subprocess.run(["docker", "ps", "-aq", "--filter", "label=envfactory.sandbox=1", "--filter", "status=exited"],
                       capture_output=True, text=True, timeout=60)
    ids = r.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=120)


def _world_readable(root: Path) -> bool:
    """Can any user traverse to `root` and read everything under it?"""
    for d in [root, *root.parents]:
        if not os.stat(d).st_mode & 0o001:
            return False
    for d, dirs, files in os.walk(root):
        if os.stat(d).st_mode & 0o005 != 0o005:
            return False
        if any(not os.stat(os.path.join(d, f)).st_mode & 0o004 for f in files):
            return False
    return True


class _Worker:
    """One sandboxed worker process and a thread that reads its answers."""

    def __init__(self, backend: str, root: Path, limits: Limits, image: str | None):
        self.backend, self.root, self.limits, self.image = backend, root, limits, image
        self.name = f"envfactory-sbx-{uuid.uuid4().hex[:12]}"
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue = queue.Queue()
        self.started = 0.0

    def _cmd(self) -> list[str]:
        lim = self.limits
        if self.backend == "docker":
            return ["docker", "run", "-i", "--name", self.name, "--label", "envfactory.sandbox=1",
                    "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=16m",
                    "--user", "65534:65534", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    "--memory", f"{lim.memory_mb}m", "--memory-swap", f"{lim.memory_mb}m",
                    "--cpus", str(lim.cpus), "--pids-limit", str(lim.pids), "--init",
                    "-v", f"{self.root}:/bundle:ro", "-v", f"{RUNNER}:/runner:ro",
                    self.image, "python3", "-u", "/runner/worker.py", "/bundle", str(lim.call_timeout_s),
                    "{}", str(lim.setup_timeout_s)]
        cmd = [sys.executable, "-I", "-B", "-u", str(RUNNER / "worker.py"), str(self.root), str(lim.call_timeout_s),
               json.dumps(self._rlimits()), str(lim.setup_timeout_s)]
        if os.geteuid() == 0 and shutil.which("unshare"):
            cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--"] + cmd
        return cmd

    def _rlimits(self) -> dict:
        """Limits the local worker sets on itself at start-up, before any generated code
        (not in a preexec hook: forking a large threaded host and shrinking its address
        space before exec can crash the child)."""
        lim = {"AS": (self.limits.memory_mb + 1024) << 20,  # address space: duckdb alone maps ~800 MB
               "FSIZE": 16 << 20, "NOFILE": 1024, "CORE": 0}
        if os.geteuid() != 0:
            lim["NPROC"] = self.limits.pids
        return lim

    def start(self) -> None:
        env = None
        if self.backend == "local":
            env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(self._cmd(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env,
                                     start_new_session=self.backend == "local")
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        self.started = time.monotonic()

    @staticmethod
    def _read(proc, lines):
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def ask(self, req: dict, deadline_s: float) -> dict:
        """Send one request; the response, or {"failed": reason} if the worker died or hung."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"failed": self._ended("the sandbox exited before the request")}
        # A verify/tools request first sets up (imports the module, opens the database) under
        # the worker's own set-up budget and says {"loaded": true}; only then do its calls,
        # and so the host's per-call deadline, start.
        setup = req.get("op") in ("verify", "tools")
        wait_s = self.limits.setup_timeout_s * 2 + self.limits.batch_slack_s if setup else deadline_s
        while True:
            try:
                line = self.lines.get(timeout=wait_s)
            except queue.Empty:
                self.stop()
                return {"failed": f"timeout: no answer within {wait_s:.0f} s; the sandbox was killed"}
            if setup and line is not None and line.startswith('{"loaded"'):
                setup, wait_s = False, deadline_s
                continue
            break
        if line is None:
            return {"failed": self._ended("the sandbox died during the request")}
        try:
            resp = json.loads(line)
        except ValueError:
            self.stop()
            return {"failed": "the sandbox answered garbage; it was replaced"}
        if resp.get("tainted"):
            self.stop()  # generated code left processes or threads behind
        return resp

    def _ended(self, what: str) -> str:
        reason = what
        if self.backend == "docker":
            r = subprocess.run(["docker", "inspect", "-f", "{{.State.OOMKilled}} {{.State.ExitCode}}", self.name],
                               capture_output=True, text=True, timeout=30)
            if r.stdout.startswith("true"):
                reason = f"memory: {what} (killed at the {self.limits.memory_mb} MB limit)"
        elif self.proc is not None and self.proc.poll() is not None and self.proc.returncode < 0:
            reason = f"{what} (signal {-self.proc.returncode})"
        self.stop()
        return reason

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.backend == "docker":
            subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)
        else:
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc = None


class SandboxPool:
    """A warm pool of sandbox workers over one read-only root (a bundle or an environment).

    `run(requests)` sends each request to some worker and returns the responses in order;
    requests are {"op": "verify" | "tools", ...} as `sandboxes/runner/worker.py` defines,
    with paths relative to the root. A request whose worker died or hung comes back with
    every result set to {"error": reason}.
    """

    def __init__(self, root, size: int | None = None, backend: str = "auto", limits: Limits = Limits(),
                 progress=lambda msg: None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise SandboxError(f"{root} is not a directory")
        self.limits = limits
        self.backend, why = choose_backend(backend)
        self.image = None
        if why:
            warnings.warn(f"no Docker sandbox ({why}); generated code runs in local subprocesses with rlimits "
                          "only, which do not isolate the file system", SandboxWarning, stacklevel=2)
        if self.backend == "docker":
            from envfactory.sandboxes.image import ImageError, ensure_image

            try:
                self.image = ensure_image(progress)
            except ImageError as e:
                raise SandboxError(f"the sandbox image is not available: {e}") from None
            _sweep_exited()
        self.size = max(1, size or min(os.cpu_count() or 1, 4))
        self.staged: Path | None = None
        mount = self.root
        if self.backend == "docker" and not _world_readable(self.root):
            # The container's user (65534) could not read it (a 0700 home or temp directory):
            # run on a world-readable copy instead; the originals stay as they are.
            self.staged = Path(tempfile.mkdtemp(prefix="envfactory-stage-"))
            mount = self.staged / "root"
            shutil.copytree(self.root, mount, ignore=shutil.ignore_patterns("__pycache__"))
            for d, dirs, files in os.walk(self.staged):
                os.chmod(d, 0o755)
                for f in files:
                    os.chmod(os.path.join(d, f), 0o444)
            progress(f"{self.root} is not readable by the sandbox user; running on a copy in {self.staged}")
        self.workers = [_Worker(self.backend, mount, limits, self.image) for _ in range(self.size)]
        self.calls = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.staged is not None:
            shutil.rmtree(self.staged, ignore_errors=True)
            self.staged = None

    def warm(self) -> None:
        """Start every worker and wait until each answers a ping."""
        self.run([{"op": "ping"}] * self.size)

    def _deadline(self, req: dict) -> float:
        n = len(req.get("answers") or req.get("calls") or [None])
        return self.limits.call_timeout_s * 2 + 0.25 * n + self.limits.batch_slack_s

    def run(self, requests: list[dict]) -> list[dict]:
        out: list[dict | None] = [None] * len(requests)
        todo: queue.Queue = queue.Queue()
        for i, r in enumerate(requests):
            todo.put(i)

        def serve(w: _Worker):
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                req = requests[i]
                resp = w.ask(req, self._deadline(req))
                n = len(req.get("answers") or req.get("calls") or [])
                if "failed" not in resp and req.get("op") != "ping" and len(resp.get("results") or []) != n:
                    resp = {"failed": resp.get("error") or "the sandbox gave no result per call"}
                if "failed" in resp:
                    resp = {"results": [{"error": resp["failed"]}] * n, "failed": resp["failed"]}
                out[i] = resp

        threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.calls += sum(len(r.get("answers") or r.get("calls") or []) for r in requests)
        return out  # type: ignore[return-value]
