"""The sandbox image's Debian mirror comes from the environment or the machine's apt sources.

Each test writes a fake filesystem root under tmp_path (etc/apt/sources.list and
sources.list.d/) and checks the exact URI `apt_mirror` picks, the FACTORY_DEBIAN_MIRROR
override, and the one-line ImageError when nothing is usable. Hosts are reserved
`.test` names, never a real mirror. No Docker, no network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from envfactory.sandboxes.image import SUITE, ImageError, apt_mirror, debian_mirror


def fake_root(tmp_path: Path, sources_list: str | None = None, **d_files: str) -> Path:
    """A root whose etc/apt holds `sources_list` and sources.list.d/<name> files ('_' for '.')."""
    apt = tmp_path / "etc/apt"
    (apt / "sources.list.d").mkdir(parents=True)
    if sources_list is not None:
        (apt / "sources.list").write_text(sources_list)
    for name, text in d_files.items():
        (apt / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return tmp_path


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("FACTORY_DEBIAN_MIRROR", raising=False)


def test_one_line_skips_comments_src_cdrom_and_security(tmp_path):
    root = fake_root(tmp_path, f"""\
# deb http://commented.test/debian {SUITE} main
deb cdrom:[Debian GNU/Linux 12]/ {SUITE} main
deb file:/srv/local-debian {SUITE} main
deb-src http://src.test/debian {SUITE} main
deb [signed-by=/x arch=amd64] http://sec.test/debian-security {SUITE}-security main
deb [ arch=amd64 ] http://upd.test/debian {SUITE}-updates main
deb [signed-by=/x arch=amd64] http://main.test/debian {SUITE} main contrib  # the archive
""")
    assert apt_mirror(root) == "http://main.test/debian"


def test_deb822_skips_disabled_and_takes_main_after_security(tmp_path):
    root = fake_root(tmp_path, debian_sources=f"""\
Types: deb
# a comment inside a stanza
URIs: http://sec.test/debian-security
Suites: {SUITE}-security
Components: main

Types: deb
URIs: http://off.test/debian
Suites: {SUITE}
Components: main
Enabled: no

Types: deb-src
URIs: http://src.test/debian
Suites: {SUITE}
Components: main

Types: deb deb-src
URIs: http://main.test/debian
Suites: {SUITE}-updates
 {SUITE}
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
""")
    assert apt_mirror(root) == "http://main.test/debian"


def test_path_ending_in_debian_wins_over_other_repos(tmp_path):
    # a third-party repo with the main component and a plain suite, listed first
    root = fake_root(
        tmp_path,
        "deb https://vendor.test/node_20.x nodistro main\n"
        f"deb https://docker.test/linux/debian {SUITE} stable\n",  # no main component
        zz_sources=f"Types: deb\nURIs: http://b.test/mirror/debian/\nSuites: trixie\nComponents: main\n",
    )
    assert apt_mirror(root) == "http://b.test/mirror/debian/"


def test_suite_breaks_a_tie_then_file_order(tmp_path):
    root = fake_root(
        tmp_path,
        "deb http://old.test/debian bullseye main\n",
        a_list=f"deb http://first.test/debian {SUITE} main\n",
        b_list=f"deb http://second.test/debian {SUITE} main\n",
    )
    assert apt_mirror(root) == "http://first.test/debian"


def test_only_unusable_entries_or_no_files_give_none(tmp_path):
    root = fake_root(
        tmp_path / "a",
        f"deb http://sec.test/debian-security {SUITE}/updates main\n",
        off_sources=f"Types: deb\nURIs: http://off.test/debian\nSuites: {SUITE}\nComponents: main\nEnabled: no\n",
        ignored_list_disabled=f"deb http://ignored.test/debian {SUITE} main\n",
    )
    assert apt_mirror(root) is None
    assert apt_mirror(tmp_path / "empty") is None


def test_env_overrides_apt(tmp_path, monkeypatch):
    root = fake_root(tmp_path, f"deb http://main.test/debian {SUITE} main\n")
    monkeypatch.setenv("FACTORY_DEBIAN_MIRROR", "http://env.test/debian")
    assert debian_mirror(root) == "http://env.test/debian"
    monkeypatch.setenv("FACTORY_DEBIAN_MIRROR", "  ")  # blank counts as unset
    assert debian_mirror(root) == "http://main.test/debian"


def test_nothing_found_is_one_clear_line(tmp_path):
    root = fake_root(tmp_path, f"deb-src http://src.test/debian {SUITE} main\n")
    with pytest.raises(ImageError) as e:
        debian_mirror(root)
    apt = tmp_path / "etc/apt"
    assert str(e.value) == (
        "no Debian mirror found: no enabled deb entry with a plain suite and the main component "
        f"in {apt}/sources.list or {apt}/sources.list.d/*.list, *.sources; "
        "set FACTORY_DEBIAN_MIRROR to the mirror's URI")


def test_build_reads_the_mirror_at_build_time(monkeypatch):
    # stop at debootstrap: the command it would run is the value under test
    import envfactory.sandboxes.image as image

    class Stop(Exception):
        pass

    seen = []

    def fake_run(cmd, what, timeout, **kw):
        seen.append(cmd)
        raise Stop

    monkeypatch.setattr(image.os, "geteuid", lambda: 0)
    monkeypatch.setattr(image.shutil, "which", lambda name: "/usr/sbin/" + name)
    monkeypatch.setattr(image, "_run", fake_run)
    monkeypatch.setattr(image, "_duckdb_version", lambda: "1.0.0")
    monkeypatch.setenv("FACTORY_DEBIAN_MIRROR", "http://late.test/debian")  # set after import
    with pytest.raises(Stop):
        image.build_image()
    assert seen[0][0] == "debootstrap" and seen[0][-1] == "http://late.test/debian"
