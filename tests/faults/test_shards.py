"""Shard builds that fail: a rerun after a crash reuses the finished shards and replaces broken
ones, --verify names every broken shard, and a build killed mid-way (SIGKILL) resumes to the same
result (the builder itself: tests/unit/prep/test_shards.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.support.shards import build_small_synthetic, tar_contents
from tests.support.training import ROOT
from wikiart.cli.build_shards import main
from wikiart.prep.write import STATE_DIR, verify_shards


@pytest.mark.faults
def test_rerun_reuses_finished_shards_and_replaces_broken_ones(tmp_path, capsys):
    out = tmp_path / "out"
    build_small_synthetic(out)
    original = tar_contents(out)
    names = sorted(original)
    (out / "manifest.json").unlink()
    (out / names[0]).unlink()                                   # lost shard
    damaged = bytearray(original[names[1]])
    damaged[600] ^= 0xFF
    (out / names[1]).write_bytes(bytes(damaged))                # same size, wrong bytes
    (out / (names[2] + ".tmp")).write_bytes(b"half a shard")    # a crashed writer's leftover
    (out / STATE_DIR / f"{names[3]}.json").unlink()             # crashed after rename, before recording
    capsys.readouterr()
    build_small_synthetic(out)
    assert f"{len(names) - 3} reused" in capsys.readouterr().out
    assert tar_contents(out) == original
    assert not list(out.glob("*.tmp")) and verify_shards(out) == []


@pytest.mark.faults
def test_verify_names_every_broken_shard(tmp_path, capsys):
    out = tmp_path / "out"
    build_small_synthetic(out)
    names = sorted(tar_contents(out))
    (out / names[0]).unlink()
    data = bytearray((out / names[1]).read_bytes())
    data[700] ^= 0xFF
    (out / names[1]).write_bytes(bytes(data))
    assert main(["--verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{names[0]}: missing" in err and f"{names[1]}: sha256 differs" in err
    assert main(["--verify", str(tmp_path / "nowhere")]) == 1


@pytest.mark.faults
@pytest.mark.slow
def test_killed_build_resumes_to_the_same_result(tmp_path):
    out, clean = tmp_path / "killed", tmp_path / "clean"
    args = ["--synthetic", "400", "--synthetic-max-side", "400", "--short-side", "64", "--workers", "0",
            "--no-progress", "--min-shards", "16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "wikiart.cli.build_shards", "--out", str(out), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list((out / STATE_DIR).glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "manifest.json").exists()
    at_kill = tar_contents(out)   # whatever carries a final name must be complete
    done = {p.name[:-5] for p in (out / STATE_DIR).glob("*.json")}
    assert 3 <= len(done) < 19
    assert subprocess.run([sys.executable, "-m", "wikiart.cli.build_shards", "--out", str(out), *args], env=env,
                          capture_output=True).returncode == 0
    assert subprocess.run([sys.executable, "-m", "wikiart.cli.build_shards", "--out", str(clean), *args], env=env,
                          capture_output=True).returncode == 0
    assert tar_contents(out) == tar_contents(clean)
    assert at_kill and all(tar_contents(clean)[name] == data for name, data in at_kill.items())
