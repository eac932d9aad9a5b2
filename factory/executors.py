"""Where a run's environments are built: a local process pool, or Ray tasks.

Both give the same interface to the run loop, `submit(fn, *args) -> concurrent Future`, so the
loop (`factory.generate`) waits on either with `concurrent.futures.wait`, journals outcomes
as they arrive and writes the same bytes: an environment is a pure function of its
arguments, whichever process builds it.

- `local` (the default): a spawn-context `ProcessPoolExecutor`; each worker runs the
  initializer once (its fetch context: one HTTP client and one Chromium).
- `ray`: each environment is a Ray task of one CPU. Without an address the command starts a
  local Ray instance with `workers` CPUs and stops it at the end; `--address auto` (or
  host:port) joins a running cluster. Each Ray worker process runs the initializer the first
  time it gets a task. Workers write into the run directory and reach the offline web and a
  local model server on this host's loopback, so a cluster needs the run directory on a
  shared filesystem and its workers on this host (or sources that are not loopback ones).
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import Future, ProcessPoolExecutor

from envfactory.factory.errors import UsageError

EXECUTORS = ("local", "ray")


class ExecutorError(UsageError):
    """The executor cannot start (Ray missing or unreachable)."""


class LocalPool:
    def __init__(self, workers: int, initializer=None):
        self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer)

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(fn, *args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=True)


_INITIALISED = False


def _ray_call(initializer, fn, *args):
    """Runs in a Ray worker: the initializer once per worker process, then the task."""
    global _INITIALISED
    if not _INITIALISED and initializer is not None:
        initializer()
        _INITIALISED = True
    return fn(*args)


class RayPool:
    def __init__(self, workers: int, initializer=None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs the `ray` package (pip install -e '.[ray]'; "
                                "scripts/setup.sh installs it)") from None
        self._ray = ray
        self._initializer = initializer
        self._own = not ray.is_initialized()
        if self._own:
            kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                if address:
                    ray.init(address=address, **kw)
                else:
                    ray.init(num_cpus=workers, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ExecutorError(f"ray: cannot {'join ' + address if address else 'start'}: "
                                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self._task = ray.remote(num_cpus=1, max_retries=0)(_ray_call)

    def submit(self, fn, *args) -> Future:
        return self._task.remote(self._initializer, fn, *args).future()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._own:
            self._ray.shutdown()


def make_pool(kind: str, workers: int, initializer=None, address: str | None = None):
    if kind == "local":
        if address:
            raise ExecutorError("--address is for --executor ray")
        return LocalPool(workers, initializer)
    if kind == "ray":
        return RayPool(workers, initializer, address)
    raise ExecutorError(f"unknown executor {kind!r} (executors: {', '.join(EXECUTORS)})")
