"""The run log (train/runlog.py): a resumed run forgets the rows logged after its checkpoint,
keeping each earlier row on its own line."""

from __future__ import annotations

import json


def test_forget_after_keeps_the_rows_up_to_the_step_each_on_its_own_line(tmp_path):
    from types import SimpleNamespace

    from wikiart.train.runlog import RunLogger
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n{"kind": "val", "step": 2}')
    logger = RunLogger(tmp_path, SimpleNamespace(is_main_process=True, log=lambda *a, **k: None), 10,
                       show_progress=False)
    logger.forget_after(2)  # the last row lost its newline in the kill
    logger.record("train", {"loss": 0.5}, 3)
    assert [(r["kind"], r["step"]) for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] \
        == [("train", 1), ("val", 2), ("train", 3)]
