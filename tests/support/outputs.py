"""Reading what the evaluation and prediction commands wrote and printed."""

from __future__ import annotations

import json
from pathlib import Path

from wikiart.cli.predict import main as predict_main


def strict_json(path: Path) -> dict:
    """A report file's JSON, failing on NaN or Infinity (not strict JSON)."""
    def refuse(token: str):
        raise AssertionError(f"{path} holds {token}: not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def run_predict(args: list[str], capsys) -> tuple[int, str, list[str]]:
    """wikiart-predict's main in this process: (exit status, stdout, stderr lines)."""
    capsys.readouterr()
    rc = predict_main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip().splitlines()
