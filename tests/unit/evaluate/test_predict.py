"""wikiart-predict's errors, in-process: a missing checkpoint, no image (predicting with a
trained run: tests/integration/test_predict.py)."""

from __future__ import annotations

import pytest

from tests.support.outputs import run_predict
from wikiart.cli.predict import main as predict_main


def test_predict_with_a_missing_checkpoint_fails_clearly(tmp_path, val_jpegs, capsys):
    rc, out, err = run_predict(["--checkpoint", str(tmp_path / "nope"), str(next(iter(val_jpegs.values())))],
                               capsys)
    assert rc == 1 and not out
    assert len(err) == 1 and "wikiart-predict: error:" in err[0] and str(tmp_path / "nope") in err[0]


def test_predict_needs_an_image(capsys):
    with pytest.raises(SystemExit) as exc:
        predict_main(["--checkpoint", "x"])
    assert exc.value.code == 2 and "IMAGE" in capsys.readouterr().err
