"""Headless Chromium screenshots for page checks (Debian's chromium, installed by .ci/run)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def require_chromium() -> None:
    """Skip without Chromium, except in CI (CI=true), where a missing browser is a failure."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get update && apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI requires it)")
        pytest.skip(reason)


def _chromium(url: str, profile: Path, budget_ms: int, *action: str) -> subprocess.CompletedProcess:
    require_chromium()
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,900", f"--virtual-time-budget={budget_ms}", *action, url]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(url: str, shot: Path, budget_ms: int = 15000) -> Path:
    """Render ``url`` at 1400x900 into ``shot`` with a fresh profile."""
    done = _chromium(url, shot.parent / f"{shot.stem}-profile", budget_ms, f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    return shot


def rendered_dom(url: str, workdir: Path, budget_ms: int = 15000) -> str:
    """The page's DOM after its scripts ran: what a person would read on it."""
    done = _chromium(url, workdir / "dom-profile", budget_ms, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def assert_not_blank(shot: Path, min_ink: float = 0.03, min_colours: int = 8) -> None:
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(str(shot))[..., :3]  # floats in [0, 1]
    assert pixels.shape[:2] == (900, 1400)
    non_white = (pixels < 0.94).any(axis=2).mean()
    colours = np.unique((pixels * 15).round().reshape(-1, 3), axis=0)
    assert non_white > min_ink, f"page looks blank: {non_white:.1%} non-white pixels"
    assert len(colours) >= min_colours, f"page looks blank: only {len(colours)} distinct colours"
