"""The system's headless Chromium for playwright (Debian's package: `make test-tools`)."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "chromium", "chromium-browser")


def chromium() -> str | None:
    for c in CHROMIUM_CANDIDATES:
        found = shutil.which(c) if not c.startswith("/") else (c if Path(c).exists() else None)
        if found:
            return found
    return None


def draw_report(html_path: Path, figure_ids, screenshot: Path | None = None) -> dict:
    """Open a report in headless Chromium (pytest skips without chromium or playwright) and wait for each of
    ``figure_ids`` to be drawn; per figure, its drawn traces and the grey-level variance and ink share of its
    screenshot, and every request or page error the page made (a self-contained report makes one: its own)."""
    import io

    import numpy as np
    import pytest

    exe = chromium()
    if exe is None:
        pytest.skip("chromium not found (install with: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (uses the system chromium)")
    from PIL import Image

    url = Path(html_path).resolve().as_uri()
    requests: list[str] = []
    out = {"url": url, "requests": requests, "drawn": {}, "variance": {}, "ink": {}}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: requests.append(f"pageerror: {e}"))
            page.goto(url, wait_until="load")
            for fid in figure_ids:
                page.wait_for_function(
                    "id => { const d = document.getElementById(id);"
                    " return d && d._fullLayout && d.querySelector('.main-svg'); }",
                    arg=fid,
                    timeout=30_000,
                )
            drawn = page.evaluate(
                "ids => ids.map(id => document.getElementById(id)"
                ".querySelectorAll('.scatterlayer .trace, .heatmaplayer .hm').length)",
                list(figure_ids),
            )
            out["drawn"] = dict(zip(figure_ids, drawn))
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            for fid in figure_ids:
                el = page.locator(f"#{fid}")
                el.scroll_into_view_if_needed()
                img = np.asarray(Image.open(io.BytesIO(el.screenshot())).convert("L"), dtype=np.float64)
                out["variance"][fid] = float(img.var())
                # a drawn plot has ink (axes, lines, markers, heatmap cells), not a blank canvas
                out["ink"][fid] = float((img < 200).mean())
        finally:
            browser.close()
    return out
