"""wikiart-build-shards as the installed console script, in its own process (the builder
in-process: tests/unit/prep/test_shards.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.training import ROOT


def test_cli_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    ok = subprocess.run([sys.executable, "-m", "wikiart.cli.build_shards", "--out", str(out), "--synthetic", "20",
                         "--synthetic-max-side", "32", "--short-side", "16", "--workers", "0", "--verify"],
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"verify {out}: OK" in ok.stdout and (out / "manifest.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "wikiart.cli.build_shards", "--out", str(tmp_path / "x"), "--short-side", "-1",
                          "--synthetic", "5"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--short-side" in bad.stderr and not (tmp_path / "x").exists()
