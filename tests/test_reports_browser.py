"""The reports as a user sees them: headless Chromium opens index.html of the reduced demo run (the
session fixture ``two_runs``) and every page and figure it links; no page shows a Python traceback,
every <img> decodes to a non-blank picture, every diagnostic report holds its figure. Screenshots of
every page are kept under results/screenshots/ (git-ignored) for a human look."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

pytestmark = pytest.mark.workflow
CHROMIUM = shutil.which("chromium")
TRACEBACK_MARKERS = ["Traceback (most recent call last)", "An Exception was encountered", "PapermillExecutionError"]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        if tag == "img":
            self.imgs.append(attrs.get("src", ""))


def _parse(dom: str) -> _Links:
    parser = _Links()
    parser.feed(dom)
    return parser


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1200,1600", *args, url],
            capture_output=True, text=True, timeout=120,
        )


def assert_picture(data: bytes, what: str) -> None:
    """``data`` decodes as an image that is neither tiny nor one flat colour, with some non-white ink."""
    image = Image.open(io.BytesIO(data))
    image.load()
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert min(pixels.shape) >= 20, f"{what}: {pixels.shape} is too small to be a figure"
    assert pixels.std() > 1.0, f"{what}: blank image (one flat colour)"
    assert (pixels < 200).mean() > 0.005, f"{what}: almost nothing drawn"


def image_bytes(src: str, page: Path) -> bytes:
    if src.startswith("data:"):
        return base64.b64decode(src.split(",", 1)[1])
    return (page.parent / unquote(urlparse(src).path)).read_bytes()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_every_linked_report_renders_in_chromium(two_runs):
    _, _, (res, _) = two_runs
    index = res / "reports" / "index.html"
    shots = ROOT / "results" / "screenshots" / res.name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)

    index_dom = chromium(index.as_uri(), "--dump-dom").stdout
    links = [h for h in _parse(index_dom).hrefs if not urlparse(h).scheme]
    pages = [index] + [(index.parent / unquote(h)).resolve() for h in links]
    assert {p.suffix for p in pages} >= {".html", ".png"}
    missing = [str(p) for p in pages if not p.exists()]
    assert not missing, f"index.html links missing files: {missing}"
    html_pages = [p for p in pages if p.suffix == ".html"]
    figures = [p for p in pages if p.suffix == ".png"]

    def visit(page: Path):
        dom = chromium(page.as_uri(), "--dump-dom").stdout if page.suffix == ".html" else ""
        shot = shots / f"{page.parent.name}_{page.stem}.png"
        chromium(page.as_uri(), f"--screenshot={shot}")
        return page, dom, shot

    with ThreadPoolExecutor(max_workers=3) as pool:
        visited = list(pool.map(visit, pages))

    figure_stems = {p.stem for p in figures}
    for page, dom, shot in visited:
        assert shot.exists(), f"no screenshot of {page}"
        assert_picture(shot.read_bytes(), f"screenshot of {page.name}")
        if page.suffix == ".png":
            assert_picture(page.read_bytes(), str(page))
            continue
        if page.suffix == ".json":  # provenance.json
            json.loads(page.read_text())
            continue
        assert len(dom) > 500, f"{page.name}: Chromium rendered an empty page"
        for marker in TRACEBACK_MARKERS:
            assert marker not in dom, f"{page.name} shows a Python error ({marker!r})"
        imgs = _parse(dom).imgs
        if page.stem in figure_stems:
            assert imgs, f"{page.name}: its figure is missing from the page"
        for i, src in enumerate(imgs):
            assert_picture(image_bytes(src, page), f"{page.name} <img> #{i}")
    assert len(html_pages) >= 10 and len(figures) >= 7
