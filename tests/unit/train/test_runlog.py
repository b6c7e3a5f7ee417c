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


def test_a_checkpoint_counts_the_rows_of_its_step_and_its_resume_keeps_only_those(tmp_path):
    """A save at an epoch's last step comes before the epoch's validation row. Killed after that
    row, the resumed run validates again: the first row of the step must go, not be kept twice.
    Hub push rows are the background uploader's and are kept whatever the count."""
    from types import SimpleNamespace

    from wikiart.train.runlog import RunLogger
    accelerator = SimpleNamespace(is_main_process=True, log=lambda *a, **k: None)
    logger = RunLogger(tmp_path, accelerator, 10, show_progress=False)
    logger.record("train", {"loss": 1.0}, 10)
    logger.record("train", {"loss": 1.0}, 11)
    assert logger.rows_at(11) == 1 and logger.rows_at(10) == 0   # what the save of step 11 records
    logger.record("hub", {"status": "pushed"}, 11)
    logger.record("val", {"score": 0.5}, 11)                     # the epoch end, after the save
    logger.record("epoch", {"epoch": 1}, 11)
    assert logger.rows_at(11) == 3

    resumed = RunLogger(tmp_path, accelerator, 10, show_progress=False)
    resumed.forget_after(11, rows_at_step=1)
    rows = [(r["kind"], r["step"]) for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert rows == [("train", 10), ("train", 11), ("hub", 11)]
    assert resumed.rows_at(11) == 1                              # its next save of step 11 counts on
    resumed.record("val", {"score": 0.5}, 11)
    assert resumed.rows_at(11) == 2

    older = RunLogger(tmp_path, accelerator, 10, show_progress=False)
    older.forget_after(11)  # a checkpoint from before the count: every row of its step is kept
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
