"""Load a page in headless Chromium (Debian's package; `make test` installs it where missing) and read back the DOM
after the window's load event: what a reader's browser shows, images included."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest


@dataclass
class Dom:
    """What the tests look at in a page Chromium rendered."""

    body: dict[str, str | None] = field(default_factory=dict)
    images: list[dict[str, str | None]] = field(default_factory=list)
    table_rows: dict[str, int] = field(default_factory=dict)  # table id -> rows in its tbody
    links: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # what a reader sees (no script or style)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.dom, self.table, self.in_body, self.in_code = Dom(), None, False, False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "style"):
            self.in_code = True
        elif tag == "body":
            self.dom.body = a
        elif tag == "img":
            self.dom.images.append(a)
        elif tag == "table":
            self.table = a.get("id") or ""
            self.dom.table_rows[self.table] = 0
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body and self.table is not None:
            self.dom.table_rows[self.table] += 1
        elif tag == "a" and a.get("href"):
            self.dom.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.in_code = False
        elif tag == "tbody":
            self.in_body = False
        elif tag == "table":
            self.table = None

    def handle_data(self, data: str) -> None:
        if not self.in_code:
            self.dom.text.append(data)


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not on PATH; `make test` installs it (tests/install-chromium.sh, needs root)")
    return exe


def _flags(profile: Path) -> list[str]:
    # root in a container: no sandbox; a private profile, so parallel runs never share Chromium's lock
    return ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--virtual-time-budget=10000"]


def render(page: Path, profile: Path) -> Dom:
    """The page's DOM as Chromium holds it once the page (and its images) loaded."""
    out = subprocess.run([chromium(), *_flags(profile), "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    p = _Parser()
    p.feed(out.stdout)
    return p.dom


def screenshot(page: Path, profile: Path, out: Path, size: str = "1200,1000") -> Path:
    subprocess.run([chromium(), *_flags(profile), f"--window-size={size}", f"--screenshot={out}",
                    page.resolve().as_uri()], capture_output=True, timeout=120, check=True)
    assert out.stat().st_size > 0
    return out
