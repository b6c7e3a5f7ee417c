"""wikiart-import-seed as the installed console script, end to end, then --overwrite (the import
itself: tests/unit/cli/test_seed_import.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.support.seed_model import GENRES, ResNet50_RowColBiGRU, class_file
from wikiart.cli.import_seed import main


def test_console_script_end_to_end_and_overwrite(tmp_path, capsys):
    torch.save(ResNet50_RowColBiGRU(len(GENRES)).state_dict(), tmp_path / "w.pt")
    args = [str(tmp_path / "w.pt"), "--task", "genre", "--classes",
            str(class_file(tmp_path / "genre_class.txt", GENRES)), "--out", str(tmp_path / "out")]
    script = Path(sys.executable).parent / "wikiart-import-seed"  # the installed entry point
    done = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    assert "wrote" in done.stdout and "genre 5" in done.stdout
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(args) == 1  # in-process: a second interpreter start costs seconds
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a model; pass --overwrite" in err
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before
    torch.save(ResNet50_RowColBiGRU(len(GENRES)).state_dict(), tmp_path / "w.pt")  # other random weights
    assert main(args + ["--overwrite"]) == 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genre_class.txt", "out", "w.pt"]
