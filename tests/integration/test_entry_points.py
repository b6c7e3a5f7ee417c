"""The installed wikiart-train script runs in its own process (the declared entry points:
tests/unit/cli/test_entry_points.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.training import ROOT


def test_wikiart_train_help_runs_the_installed_script():
    script = Path(sys.executable).parent / "wikiart-train"
    proc = subprocess.run([str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--task" in proc.stdout and "--collective-timeout" in proc.stdout
