"""The sandbox's Docker image, built locally with no registry pull.

Recipe: a minimal Debian root made with `debootstrap` (Python 3.11 from Debian), plus the
same duckdb release as the host's, installed from PyPI with `pip --target` at build time;
documentation and package lists are removed, and the tree is imported with `docker
import`. The tag is a hash of the recipe, so a changed recipe builds a new image and an
unchanged one is reused. The worker script is not baked in: it is mounted read-only
at run time (`sandboxes/runner`).

The Debian mirror is looked up when the image is built, never at import: the
FACTORY_DEBIAN_MIRROR environment variable if set, else the machine's own apt sources
(`etc/apt/sources.list`, `etc/apt/sources.list.d/*.list` and `*.sources`), taking an
enabled `deb` entry of the main component with a plain suite (no `-security`,
`-updates`), preferring a URI whose path ends in `/debian`, then one listing SUITE.
No mirror host is named here: without either source the build stops with ImageError.

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

__all__ = ["ImageError", "image_tag", "image_exists", "ensure_image", "docker_ready", "REPO",
           "apt_mirror", "debian_mirror"]

REPO = "envfactory-sandbox"
SUITE = "bookworm"
RECIPE_VERSION = 1
MIRROR_ENV = "FACTORY_DEBIAN_MIRROR"
# debootstrap fetches over these; cdrom:, file: and the like name nothing another machine can use
_NET_SCHEMES = ("http://", "https://")
_OFF = {"no", "false", "off", "0"}


class ImageError(RuntimeError):
    pass


def _one_line_entries(text: str):
    """(uri, suites, components) of each `deb` line of a one-line-format sources file."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue  # blank, comment, deb-src
        words = words[1:]
        if words and words[0].startswith("["):
            # options may hold spaces ("[ arch=amd64 ]"): skip up to the word that closes them
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0], words[1:2], words[2:]


def _stanzas(text: str):
    """The field dicts (lower-cased names) of a deb822 file; continuation lines fold in."""
    fields, last = {}, None
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0].isspace() and last:
            fields[last] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            last = name.strip().lower()
            fields[last] = value.strip()


def _deb822_entries(text: str):
    for f in _stanzas(text):
        if "deb" not in f.get("types", "").split() or f.get("enabled", "yes").lower() in _OFF:
            continue
        suites, comps = f.get("suites", "").split(), f.get("components", "").split()
        for uri in f.get("uris", "").split():
            yield uri, suites, comps


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""  # an unreadable file is one source fewer, not a failed build


def _apt_entries(root: Path):
    apt = root / "etc/apt"
    yield from _one_line_entries(_read(apt / "sources.list"))
    d = apt / "sources.list.d"
    files = sorted(d.iterdir()) if d.is_dir() else []
    for p in files:
        if p.suffix == ".list":
            yield from _one_line_entries(_read(p))
        elif p.suffix == ".sources":
            yield from _deb822_entries(_read(p))


def apt_mirror(root: Path = Path("/")) -> str | None:
    """The Debian archive URI in the apt sources under `root`, or None if none is usable.

    Usable: an enabled `deb` entry over http(s) with the main component and a plain
    suite (no dash or slash, so not -security, -updates, -backports). Among those, a
    URI path ending in /debian wins, then one listing SUITE, then the first in file order.
    """
    best, best_rank = None, None
    for uri, suites, comps in _apt_entries(Path(root)):
        plain = [s for s in suites if "-" not in s and "/" not in s]
        if not uri.startswith(_NET_SCHEMES) or not plain or "main" not in comps:
            continue
        rank = (uri.rstrip("/").endswith("/debian"), SUITE in plain)
        if best_rank is None or rank > best_rank:
            best, best_rank = uri, rank
    return best


def debian_mirror(root: Path = Path("/")) -> str:
    """The mirror to debootstrap from: $FACTORY_DEBIAN_MIRROR, else apt_mirror(root)."""
    mirror = os.environ.get(MIRROR_ENV, "").strip() or apt_mirror(root)
    if not mirror:
        apt = Path(root) / "etc/apt"
        raise ImageError(f"no Debian mirror found: no enabled deb entry with a plain suite and the main component "
                         f"in {apt / 'sources.list'} or {apt / 'sources.list.d'}/*.list, *.sources; "
                         f"set {MIRROR_ENV} to the mirror's URI")
    return mirror


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
    mirror = debian_mirror()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="envfactory-image-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "root"
        progress(f"debootstrap {SUITE} (minbase + python3) from {mirror}")
        _run(["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(root), mirror],
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
