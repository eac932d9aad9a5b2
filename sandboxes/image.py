"""The sandbox's Docker image, built locally with no registry pull.

Recipe: a minimal Debian root made with `debootstrap` (Python 3.11 from Debian), plus the
same duckdb release as the host's, installed from PyPI with `pip --target` at build time;
documentation and package lists are removed, and the tree is imported with `docker
import`. The tag is a hash of the recipe, so a changed recipe builds a new image and an
unchanged one is reused. The worker script is not baked in: it is mounted read-only
at run time (`sandboxes/runner`).

    python -m envfactory.sandboxes.image          # build if missing, print the tag
    python -m envfactory.sandboxes.image --check  # exit 0 if the image exists
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["ImageError", "image_tag", "image_exists", "ensure_image", "docker_ready", "REPO"]

REPO = "envfactory-sandbox"
SUITE = "bookworm"
RECIPE_VERSION = 1
MIRROR = os.environ.get("FACTORY_DEBIAN_MIRROR", "http://deb.debian.org/debian")


class ImageError(RuntimeError):
    pass


def _duckdb_version() -> str:
    import duckdb

    return duckdb.__version__


def image_tag() -> str:
    recipe = f"{RECIPE_VERSION}|{SUITE}|python3|duckdb=={_duckdb_version()}"
    return f"{REPO}:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def _docker(*args, timeout=60, check=False, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check, **kw)
    except FileNotFoundError:
        raise ImageError("the docker command is not installed") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"docker {args[0]} did not answer within {timeout} s") from None


def docker_ready() -> str | None:
    """None if a Docker daemon answers, else the reason it does not."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        r = _docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except ImageError as e:
        return str(e)
    if r.returncode != 0 or not r.stdout.strip():
        return "no Docker daemon answers (" + (r.stderr.strip().splitlines() or ["docker info failed"])[-1] + ")"
    return None


def image_exists(tag: str | None = None) -> bool:
    return _docker("image", "inspect", tag or image_tag(), timeout=30).returncode == 0


def _run(cmd, what, timeout, **kw):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise ImageError(f"{what}: {cmd[0]} is not installed (apt-get install -y {cmd[0]})") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what}: no result within {timeout} s") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise ImageError(f"{what} failed: {' | '.join(tail)}")
    return r


def build_image(progress=lambda msg: None) -> str:
    """Build the image (about a minute: debootstrap dominates) and return its tag."""
    tag = image_tag()
    if os.geteuid() != 0:
        raise ImageError("building the sandbox image needs root (debootstrap); run `sudo python -m envfactory.sandboxes.image`")
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (apt-get install -y debootstrap)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="envfactory-image-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "root"
        progress(f"debootstrap {SUITE} (minbase + python3) from {MIRROR}")
        _run(["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(root), MIRROR],
             "debootstrap", timeout=900)
        progress(f"pip install duckdb=={_duckdb_version()} into the image")
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
              "--only-binary", ":all:", "--python-version", "3.11", "--implementation", "cp",
              "--platform", f"manylinux_2_28_{platform.machine()}", "--target", str(root / "opt/sandbox/site"),
              f"duckdb=={_duckdb_version()}"], "pip install duckdb", timeout=600)
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
                     "var/cache/apt", "var/lib/apt/lists"):
            p = root / junk
            if p.is_dir():
                shutil.rmtree(p)
                p.mkdir()
        progress(f"docker import as {tag}")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(["docker", "import",
                  "-c", "ENV PYTHONPATH=/opt/sandbox/site",
                  "-c", "ENV PYTHONDONTWRITEBYTECODE=1",
                  "-c", "ENV HOME=/tmp",
                  "-c", "USER 65534:65534",
                  "-c", f"LABEL envfactory.recipe={RECIPE_VERSION}",
                  "-", tag], "docker import", timeout=600, stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait()
    check = _docker("run", "--rm", "--network", "none", tag, "python3", "-c", "import duckdb; print(duckdb.__version__)",
                    timeout=120)
    if check.returncode != 0 or check.stdout.strip() != _duckdb_version():
        raise ImageError(f"the built image does not run duckdb: {check.stderr.strip()[-300:]}")
    progress(f"built {tag} in {time.monotonic() - t0:.0f} s")
    return tag


def ensure_image(progress=lambda msg: None) -> str:
    """The image's tag, building it first if it does not exist."""
    why = docker_ready()
    if why:
        raise ImageError(why)
    tag = image_tag()
    if not image_exists(tag):
        build_image(progress)
    return tag


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m envfactory.sandboxes.image", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 0 if the image exists, 1 if not; build nothing")
    a = ap.parse_args(argv)
    try:
        if a.check:
            ok = docker_ready() is None and image_exists()
            print(image_tag(), "present" if ok else "missing")
            return 0 if ok else 1
        print(ensure_image(lambda m: print(f"sandbox image: {m}", file=sys.stderr, flush=True)))
        return 0
    except ImageError as e:
        print(f"sandbox image: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
