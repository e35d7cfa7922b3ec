"""Screenshots of a report, one PNG per section, with headless Chromium (Debian's
`chromium` package) and Pillow.

    python docs/screenshots/take.py results/overnight.html docs/screenshots

The page is rendered 1280 px wide; a second render reports where each section heading
lies, and the full page is cut there.
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
PROBE = ("<script>document.title=JSON.stringify([...document.querySelectorAll('h2')].map("
         "h=>[h.textContent, Math.round(h.getBoundingClientRect().top+window.scrollY)]))</script></body>")


def main(report: str, out: str) -> None:
    page, folder = Path(report).resolve(), Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        subprocess.run([*CHROMIUM, "--window-size=1280,20000", f"--screenshot={full}", page.as_uri()],
                       check=True, capture_output=True)
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.read_text().replace("</body>", PROBE))
        dom = subprocess.run([*CHROMIUM, "--window-size=1280,20000", "--dump-dom", probe.as_uri()],
                             check=True, capture_output=True, text=True).stdout
        headings = json.loads(re.search(r"<title>(.*?)</title>", dom, re.S).group(1).replace("&quot;", '"'))
        image = Image.open(full).convert("RGB")
        inked = (np.asarray(image.convert("L")) < 250).any(axis=1)
        end = int(np.flatnonzero(inked).max()) + 20
        tops = [0] + [top - 10 for _, top in headings[1:]] + [end]
        for i, (a, b) in enumerate(zip(tops, tops[1:])):
            name = re.sub(r"[^a-z0-9]+", "-", headings[i][0].lower().split(",")[0]).strip("-")
            part = image.crop((60, a, 1220, b)).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
            part.save(folder / f"{i + 1}-{name}.png", optimize=True)
            print(folder / f"{i + 1}-{name}.png", b - a, "px")


if __name__ == "__main__":
    main(*sys.argv[1:3])
