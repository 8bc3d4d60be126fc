"""Make the screenshot of `lwr report --html` shown in the README and docs/studies.md.

    python tools/screenshot_report.py SWEEP_OR_RUN_DIRS... [--out docs/report-screenshot.png]
    python tools/screenshot_report.py PAGE.html [--out ...]

Given run or sweep folders it writes their page with `lwr report DIRS --html` first; given a
page it uses that. The browser is driven by tests/browser.py, the code of the real-browser
test (tests/test_report_html.py), with the same offline, deterministic flags. The picture is
the top 3000 px of the page at 1280 px wide (table, curves, per-class accuracy, geometry),
reduced to a 256-colour PNG under --max-kb (300 KB) so the repository stays small. The
README's picture: a sweep of synthetic-lt-bs and synthetic-lt-bs-lwr, seeds 0 and 1, on
`lwr prepare-data synthetic --seed 0` data.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import browser  # noqa: E402


def page_of(inputs: list[Path], tmp: Path) -> Path:
    """The page to photograph: the given .html file, or the report of the given folders."""
    if len(inputs) == 1 and inputs[0].suffix.lower() in (".html", ".htm"):
        return inputs[0]
    page = tmp / "report.html"
    cmd = [sys.executable, "-m", "lwrcli", "report", *map(str, inputs), "--html", str(page)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return page


def shrink(png: Path, out: Path, max_kb: int) -> int:
    """`png` as a 256-colour (then fewer) optimised PNG at `out`, under `max_kb`; its size."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    for colours in (256, 128, 64, 32):
        small = image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=0)
        small.save(out, format="PNG", optimize=True)
        if out.stat().st_size <= max_kb * 1024:
            break
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="a page, or run/sweep folders")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report-screenshot.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--dark", action="store_true", help="prefers-color-scheme: dark")
    parser.add_argument("--max-kb", type=int, default=300)
    args = parser.parse_args(argv)
    if browser.find_chromium() is None:
        print(browser.MISSING, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        page = page_of(args.inputs, tmp)
        raw = tmp / "shot.png"
        browser.screenshot(page, raw, args.width, args.height, tmp / "profile", args.dark)
        size = shrink(raw, args.out, args.max_kb)
    print(f"Wrote {args.out} ({size / 1024:.0f} KB, {args.width}x{args.height}).")
    return 0 if size <= args.max_kb * 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
