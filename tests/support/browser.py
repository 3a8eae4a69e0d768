"""The system's headless Chromium for playwright (Debian's package: `make test-tools`)."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "chromium", "chromium-browser")

_RECORD_ERRORS = """
window.__pageErrors = [];
window.addEventListener('error', e => window.__pageErrors.push(String(e.message || e.target.src || e.target.href)), true);
window.addEventListener('unhandledrejection', e => window.__pageErrors.push(String(e.reason)));
"""


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
            # Every wait ends on an outcome, not a clock: a request elsewhere is aborted (and reported below),
            # a script error ends the figure waits, so the suite's other tests on the same cores only slow it.
            page.set_default_timeout(0)
            page.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
            page.add_init_script(_RECORD_ERRORS)
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: requests.append(f"pageerror: {e}"))
            page.goto(url, wait_until="load")
            for fid in figure_ids:
                page.wait_for_function(
                    # after "load" the document is whole: a missing figure stays missing
                    "id => { const d = document.getElementById(id); return !d || window.__pageErrors.length"
                    " || (d._fullLayout && d.querySelector('.main-svg')); }",
                    arg=fid,
                )
            drawn = page.evaluate(
                "ids => ids.map(id => { const d = document.getElementById(id);"
                " return d ? d.querySelectorAll('.scatterlayer .trace, .barlayer .trace, .heatmaplayer .hm').length : -1; })",
                list(figure_ids),
            )
            out["drawn"] = dict(zip(figure_ids, drawn))
            requests.extend(f"pageerror: {e}" for e in page.evaluate("window.__pageErrors"))
            if min(drawn, default=0) <= 0:
                return out
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
