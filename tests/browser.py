"""Headless Chromium for the HTML pages: the real-browser test (tests/test_report_html.py)
and the screenshot in the README and docs (tools/screenshot_report.py) both drive it here,
so the picture users see is made the way the test checks it.

Chromium is Debian's `chromium` package (`apt-get install -y chromium`); .ci/run installs
it. Each call starts one browser process on a file:// page and waits for it to exit (with a
timeout; never a sleep). The flags keep it offline and the picture deterministic:

- `--headless`, `--disable-gpu`, `--no-sandbox` only when running as root (Chromium refuses
  to start its sandbox as root; as another user the sandbox stays on);
- a fresh `--user-data-dir` per call (no profile, cache or first-run state carried over);
- offline: every host name resolves to nothing (`--host-resolver-rules`), and background
  networking, component updates, sync, extensions and default apps are off;
- deterministic pixels: device scale factor 1, sRGB colour profile, hidden scrollbars, and
  `--virtual-time-budget` so the page has finished loading and laying out before the
  screenshot (virtual time: no wall-clock wait);
- `--force-dark-mode` for the dark-mode picture (prefers-color-scheme: dark).

Console messages: with `--enable-logging=stderr` Chromium logs every console message of the
page as a line `[pid:tid:time:LEVEL:CONSOLE(line)] "message", source: URL (line)` (the level
is INFO even for errors and uncaught exceptions). The pages lwr writes run no script and log
nothing, so any such line is a failure; `console_messages` returns them. Everything else on
stderr is Chromium talking about its own environment, not the page, and is ignored: D-Bus
connection errors (no system bus in a container), VA-API/DRM and GPU-process warnings (no
GPU), sandbox notes, and the Debian launcher's shell warnings about /dev/shm.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "chromium"  # Debian's package name (and the program it installs)
MISSING = (
    "headless Chromium not found on PATH: install Debian's `chromium` package "
    "(apt-get install -y chromium) to run the real-browser test"
)
CONSOLE = re.compile(r"^\[[^\]]*:CONSOLE[:(\]][^\]]*\]\s*(.*)$")
TIMEOUT_S = 90


def find_chromium() -> str | None:
    """The Chromium program on PATH (`chromium`, or `chromium-browser` elsewhere)."""
    return shutil.which(PACKAGE) or shutil.which("chromium-browser")


@dataclass
class Run:
    stdout: str
    stderr: str


def flags(profile: Path, dark: bool = False) -> list[str]:
    out = [
        "--headless",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--mute-audio",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--force-color-profile=srgb",
        "--virtual-time-budget=10000",
        "--enable-logging=stderr",
        "--v=0",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        out.append("--no-sandbox")
    if dark:
        out.append("--force-dark-mode")
    return out


def run(page: Path, profile: Path, *extra: str, dark: bool = False) -> Run:
    """Chromium on `page` with `extra` flags (--dump-dom, --screenshot=...), waited for."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(MISSING)
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [chromium, *flags(profile, dark), *extra, Path(page).resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}")
    return Run(done.stdout, done.stderr)


def dump_dom(page: Path, profile: Path) -> Run:
    """The DOM after loading, serialised (`--dump-dom`), in `Run.stdout`."""
    return run(page, profile, "--dump-dom")


def screenshot(
    page: Path, png: Path, width: int, height: int, profile: Path, dark: bool = False
) -> Run:
    """A `width` x `height` PNG of the page's top (`--screenshot`, `--window-size`)."""
    done = run(page, profile, f"--window-size={width},{height}", f"--screenshot={png}", dark=dark)
    if not Path(png).is_file():
        raise RuntimeError(f"chromium wrote no screenshot:\n{done.stderr[-3000:]}")
    return done


def console_messages(stderr: str) -> list[str]:
    """The page's console messages (errors, warnings, logs, uncaught exceptions) in
    Chromium's stderr; the environment noise the module docstring lists is not among them."""
    return [m.group(1) for line in stderr.splitlines() if (m := CONSOLE.match(line.strip()))]
