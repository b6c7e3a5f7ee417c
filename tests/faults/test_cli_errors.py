"""Bad input to every command line (issue #8, "Bad input to reject clearly").

One table: each row is a command (train.py, evaluate.py, wikiart-build-shards, wikiart-predict),
its arguments and the text that must name the bad input. For every row the command must

- exit non-zero,
- print its error as ONE line `PROG: error: ...` that names the input (no traceback),
- write nothing: --out does not exist afterwards, and no input (a pre-existing --out among
  them) has a file added, removed or modified.

Rows run in-process through the real entry points (train.py and evaluate.py executed as
`__main__`, the console scripts' `main(argv)`), so the whole table takes seconds; the rows in
SUBPROCESS_ROWS, one or more per command, run as real processes (`python train.py`, the
installed console scripts), and WIKIART_CLI_ERRORS_SUBPROCESS=1 runs every row that way.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.artgan import ARTGAN_IMAGES, ARTGAN_ROWS, write_artgan
from tests.support.training import ROOT, TINY, free_port

pytestmark = pytest.mark.faults
# A run small enough that a row wrongly accepted ends in seconds (and then fails its row).
QUICK_RUN = ["--task", "genre", *TINY, "--proj-dim", "8", "--rnn-hidden", "8", "--workers", "0", "--epochs", "1",
             "--max-steps", "1"]
MISSING_IMAGES = ("Baroque/rembrandt_night-watch.jpg", "Cubism/pablo-picasso_guitar,-glass.jpg")

# command -> (arguments every row of that command starts with; later flags override them)
BASE_ARGS = {
    "train.py": ["--shards", "{shards}", "--out", "{out}", *QUICK_RUN],
    "evaluate.py": ["--checkpoint", "{genre_model}", "--shards", "{shards}", "--out", "{out}", "--workers", "0"],
    "wikiart-build-shards": ["--out", "{out}", "--workers", "0", "--no-progress"],
    "wikiart-predict": ["--checkpoint", "{genre_model}", "{painting}"],
}

# (row id, command, arguments, substrings of the error line that name the input)
ROWS = [
    # train.py: flags
    ("train-unknown-task", "train.py", ["--task", "sculptor"], ["--task", "sculptor"]),
    ("train-batch-size-not-an-int", "train.py", ["--batch-size", "abc"], ["--batch-size", "abc"]),
    ("train-batch-size-zero", "train.py", ["--batch-size", "0"], ["--batch-size", "must be >= 1"]),
    ("train-batch-size-negative", "train.py", ["--batch-size", "-8"], ["--batch-size", "-8"]),
    ("train-eval-batch-size-zero", "train.py", ["--eval-batch-size", "0"], ["--eval-batch-size"]),
    ("train-lr-not-a-number", "train.py", ["--lr", "fast"], ["--lr", "fast"]),
    ("train-lr-zero", "train.py", ["--lr", "0"], ["--lr", "must be > 0"]),
    *([("train-fp16-without-gpu", "train.py", ["--mixed-precision", "fp16"], ["--mixed-precision fp16", "GPU"])]
      if not torch.cuda.is_available() else []),  # Accelerate would quietly train in fp32, unscaled
    ("train-lr-negative", "train.py", ["--lr", "-0.001"], ["--lr", "-0.001"]),
    ("train-backbone-lr-zero", "train.py", ["--backbone-lr", "0"], ["--backbone-lr"]),
    ("train-image-size-zero", "train.py", ["--image-size", "0"], ["--image-size", "got 0"]),
    ("train-image-size-negative", "train.py", ["--image-size", "-32"], ["--image-size", "-32"]),
    ("train-eval-resize-zero", "train.py", ["--eval-resize", "0"], ["--eval-resize"]),
    ("train-eval-resize-below-the-crop", "train.py", ["--eval-resize", "16"], ["--eval-resize 16", "32-px"]),
    ("train-config-wrong-type", "train.py", ["--config", "{bad_yaml}"], ["{bad_yaml}", "batch_size"]),
    ("train-grad-accum-too-large", "train.py", ["--grad-accum", "1000"], ["--grad-accum 1000"]),
    ("train-mixup-and-cutmix-over-one", "train.py", ["--mixup-p", "0.8", "--cutmix-p", "0.5"],
     ["--mixup-p 0.8", "--cutmix-p 0.5", "sum to <= 1"]),
    ("train-balance-task-unknown", "train.py", ["--task", "combined", "--balance-task", "sculptor"],
     ["--balance-task", "sculptor"]),
    ("train-pretrained-path-missing", "train.py", ["--pretrained-path", "{nowhere}"],
     ["--pretrained-path {nowhere}", "not found"]),
    # train.py: shards
    ("train-shards-missing", "train.py", ["--shards", "{nowhere}"], ["{nowhere}"]),
    ("train-shards-without-manifest", "train.py", ["--shards", "{empty_dir}"], ["no manifest.json in {empty_dir}"]),
    ("train-shards-other-version", "train.py", ["--shards", "{old_shards}"],
     ["{old_shards}/manifest.json", "format version 99"]),
    ("train-shards-without-the-task", "train.py", ["--task", "artist", "--shards", "{genre_only_shards}"],
     ["task 'artist' is not in the manifest"]),
    ("train-balance-task-not-in-shards", "train.py",
     ["--shards", "{genre_only_shards}", "--balance", "inverse", "--balance-task", "style"],
     ["task 'style' is not in the manifest"]),
    # train.py: resume and run directory
    ("train-resume-damaged-checkpoint", "train.py", ["--resume", "{ckpt_damaged}"],
     ["could not read checkpoint {ckpt_damaged}"]),
    ("train-resume-other-classes", "train.py", ["--resume", "{ckpt_other_classes}"],
     ["checkpoint {ckpt_other_classes}", "genre classes", "do not match"]),
    ("train-resume-other-task", "train.py", ["--resume", "{ckpt_artist}"],
     ["checkpoint {ckpt_artist}", "heads ['artist']", "--task"]),
    ("train-resume-other-model", "train.py", ["--resume", "{ckpt_small_model}", "--proj-dim", "16"],
     ["checkpoint {ckpt_small_model}", "does not fit"]),
    ("train-resume-missing", "train.py", ["--resume", "{nowhere}"], ["--resume {nowhere}"]),
    ("train-out-holds-another-run", "train.py", ["--out", "{held_run}"],
     ["--out {held_run} already holds a run", "--resume", "--overwrite"]),
    ("train-out-is-a-file", "train.py", ["--out", "{a_file}"], ["--out {a_file}"]),
    # evaluate.py
    ("evaluate-batch-size-not-an-int", "evaluate.py", ["--batch-size", "abc"], ["--batch-size", "abc"]),
    ("evaluate-batch-size-zero", "evaluate.py", ["--batch-size", "0"], ["--batch-size"]),
    ("evaluate-eval-resize-negative", "evaluate.py", ["--eval-resize", "-1"], ["--eval-resize"]),
    ("evaluate-eval-resize-below-the-crop", "evaluate.py", ["--eval-resize", "16"], ["--eval-resize 16", "32-px"]),
    ("evaluate-out-is-a-file", "evaluate.py", ["--out", "{a_file}"], ["--out {a_file}", "not a directory"]),
    ("evaluate-out-under-a-file", "evaluate.py", ["--out", "{a_file}/eval"], ["--out {a_file}/eval"]),
    *([("evaluate-fp16-without-gpu", "evaluate.py", ["--mixed-precision", "fp16"],
        ["--mixed-precision fp16", "GPU"])] if not torch.cuda.is_available() else []),
    ("evaluate-shards-missing", "evaluate.py", ["--shards", "{nowhere}"], ["{nowhere}"]),
    ("evaluate-shards-without-manifest", "evaluate.py", ["--shards", "{empty_dir}"], ["{empty_dir}"]),
    ("evaluate-shards-other-version", "evaluate.py", ["--shards", "{old_shards}"],
     ["{old_shards}/manifest.json", "format version 99"]),
    ("evaluate-checkpoint-other-classes", "evaluate.py", ["--checkpoint", "{other_classes_model}"],
     ["checkpoint {other_classes_model}", "do not match"]),
    ("evaluate-checkpoint-other-task", "evaluate.py",
     ["--checkpoint", "{artist_model}", "--shards", "{genre_only_shards}"],
     ["checkpoint {artist_model}", "'artist' head"]),
    ("evaluate-checkpoint-missing", "evaluate.py", ["--checkpoint", "{nowhere}"], ["--checkpoint {nowhere}"]),
    # wikiart-build-shards
    ("build-unknown-task", "wikiart-build-shards", ["--synthetic", "10", "--tasks", "sculptor"],
     ["--tasks", "sculptor"]),
    ("build-synthetic-not-an-int", "wikiart-build-shards", ["--synthetic", "ten"], ["--synthetic", "ten"]),
    ("build-short-side-negative", "wikiart-build-shards", ["--synthetic", "10", "--short-side", "-1"],
     ["--short-side"]),
    ("build-shard-size-zero", "wikiart-build-shards", ["--synthetic", "10", "--shard-size", "0"],
     ["--shard-size"]),
    ("build-label-out-of-range", "wikiart-build-shards",
     ["--images-root", "{badlabel_images}", "--csv-dir", "{badlabel_csvs}"],
     ["{badlabel_csvs}/genre_train.csv:1", "label 10 out of range 0..9"]),
    ("build-images-missing", "wikiart-build-shards",
     ["--images-root", "{missing_images}", "--csv-dir", "{missing_csvs}"],
     ["--images-root {missing_images}", "2 of 10", MISSING_IMAGES[0], "--allow-missing"]),
    ("build-split-file-not-utf8", "wikiart-build-shards",
     ["--images-root", "{latin1_images}", "--csv-dir", "{latin1_csvs}"],
     ["{latin1_csvs}/genre_train.csv:9", "not UTF-8", "0xe7"]),
    ("build-images-root-missing", "wikiart-build-shards", ["--images-root", "{nowhere}", "--csv-dir", "{csvs}"],
     ["--images-root", "{nowhere}"]),
    ("build-out-holds-another-build", "wikiart-build-shards",
     ["--images-root", "{images}", "--csv-dir", "{csvs}", "--out", "{held_shards}"],
     ["--out {held_shards}", "different build", "--overwrite"]),
    # wikiart-predict
    ("predict-top-k-zero", "wikiart-predict", ["--top-k", "0"], ["--top-k"]),
    ("predict-batch-size-not-an-int", "wikiart-predict", ["--batch-size", "many"], ["--batch-size", "many"]),
    ("predict-checkpoint-missing", "wikiart-predict", ["--checkpoint", "{nowhere}"], ["--checkpoint {nowhere}"]),
    ("predict-unknown-device", "wikiart-predict", ["--device", "tpu9"], ["--device tpu9"]),
]
# Rows that also run as real processes by default: every command once, through its real entry.
SUBPROCESS_ROWS = {"train-resume-other-classes", "evaluate-checkpoint-other-task", "build-images-missing",
                   "predict-top-k-zero",
                   # in-process, Accelerate's shared state would keep fp16 for the rows after them
                   "train-fp16-without-gpu", "evaluate-fp16-without-gpu"}


def tiny_model(class_names: dict[str, list[str]]):
    from wikiart.model.classifier import CNNRNNClassifier
    return CNNRNNClassifier(backbone="resnet18", class_names=class_names, proj_dim=8, rnn_hidden=8,
                            rnn_layers=1, image_size=32)


def artgan_inputs(root: Path) -> dict[str, Path]:
    """ArtGAN downloads: a good one, one with a label out of range, one with images missing and one
    with a split file that is not UTF-8."""
    paths: dict[str, Path] = {}
    paths["images"], paths["csvs"] = write_artgan(root / "artgan")
    rows = {key: list(entries) for key, entries in ARTGAN_ROWS.items()}
    rows[("genre", "train")][0] = ("A", 10)   # genre has 10 classes: 0..9
    paths["badlabel_images"], paths["badlabel_csvs"] = write_artgan(root / "artgan_badlabel", rows)
    paths["missing_images"], paths["missing_csvs"] = write_artgan(root / "artgan_missing")
    paths["latin1_images"], paths["latin1_csvs"] = write_artgan(root / "artgan_latin1")
    with (paths["latin1_csvs"] / "genre_train.csv").open("ab") as fh:
        fh.write("Realism/gustave-courbet_la-rencontre-bonjour-monsieur-courbet.jpg,4\n".encode()
                 + "Realism/jean-fran\u00e7ois-millet_the-gleaners.jpg,4\n".encode("latin-1"))
    for rel in MISSING_IMAGES:
        (paths["missing_images"] / rel).unlink()
    return paths


@pytest.fixture(scope="module")
def inputs(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every input the table refers to, by name (built once, ~2 s). Nothing here may change."""
    from PIL import Image

    from wikiart.formats import checkpoint as ckpt

    root = tmp_path_factory.mktemp("bad_inputs")
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    classes = manifest["classes"]
    paths = {"shards": synthetic_shards, "nowhere": root / "nowhere", "empty_dir": root / "empty",
             "old_shards": root / "old_shards", "genre_only_shards": root / "genre_only_shards",
             "held_run": root / "held_run", "held_shards": root / "held_shards", "a_file": root / "a_file.txt",
             "bad_yaml": root / "bad.yaml", "painting": root / "painting.jpg"}
    paths["empty_dir"].mkdir()
    paths["old_shards"].mkdir()
    (paths["old_shards"] / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    paths["genre_only_shards"].mkdir()
    genre_only = {**manifest, "classes": {"genre": classes["genre"]},
                  "splits": {s: {**info, "class_counts": {"genre": info["class_counts"]["genre"]}}
                             for s, info in manifest["splits"].items()}}
    (paths["genre_only_shards"] / "manifest.json").write_text(json.dumps(genre_only))
    for tar in synthetic_shards.glob("*.tar"):
        (paths["genre_only_shards"] / tar.name).symlink_to(tar)
    paths["held_run"].mkdir()
    (paths["held_run"] / "config.json").write_text("{}\n")
    paths["held_shards"].mkdir()
    (paths["held_shards"] / "manifest.json").write_text(json.dumps(manifest))   # another build's
    paths["a_file"].write_text("not a directory\n")
    paths["bad_yaml"].write_text("batch_size: abc\n")
    Image.new("RGB", (40, 30), (200, 120, 40)).save(paths["painting"], "JPEG")

    for name, names in {"genre_model": {"genre": classes["genre"]},
                        "other_classes_model": {"genre": ["portrait", "landscape"]},
                        "artist_model": {"artist": classes["artist"]}}.items():
        paths[name] = root / name
        tiny_model(names).save_pretrained(paths[name])
    no_optimizer = {"state": {}, "param_groups": []}
    for name, names in {"ckpt_other_classes": {"genre": ["portrait", "landscape"]},
                        "ckpt_artist": {"artist": classes["artist"]}}.items():
        paths[name] = ckpt.save_checkpoint(root / name, ckpt.TrainState(step=1), {"w": torch.zeros(1)},
                                           no_optimizer, {"class_names": names})
    damaged = ckpt.save_checkpoint(root / "damaged_run", ckpt.TrainState(step=1), {"w": torch.zeros(1)},
                                   no_optimizer, {"class_names": {"genre": classes["genre"]}})
    (damaged / "model.safetensors").write_bytes(b"\x10\x00\x00")  # damaged after it was written
    paths["ckpt_damaged"] = damaged
    small = tiny_model({"genre": classes["genre"]})   # what QUICK_RUN builds, resumed with --proj-dim 16
    paths["ckpt_small_model"] = ckpt.save_checkpoint(root / "small_run", ckpt.TrainState(step=1), small.state_dict(),
                                                     no_optimizer, {"class_names": small.class_names_dict()})

    paths.update(artgan_inputs(root))
    return {k: str(v) for k, v in paths.items()}


def tree_state(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `roots`: (size, mtime) per path. Symlinks are not followed."""
    state = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            state[str(path)] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return state


def run_in_process(command: str, argv: list[str]) -> tuple[int, str]:
    """The command's real entry point in this process; (exit status, stderr)."""
    err, saved_argv = io.StringIO(), sys.argv
    code: int | str | None = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if command in ("train.py", "evaluate.py"):
                sys.argv = [command, *argv]
                runpy.run_path(str(ROOT / command), run_name="__main__")   # ends in sys.exit(...)
                code = 0
            elif command == "wikiart-build-shards":
                from wikiart.cli.build_shards import main
                code = main(argv)
            else:
                from wikiart.cli.predict import main
                code = main(argv)
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.argv = saved_argv
    if code is None:
        code = 0
    return (code if isinstance(code, int) else 1), err.getvalue()


def command_line(command: str) -> list[str]:
    if command in ("train.py", "evaluate.py"):
        return [sys.executable, str(ROOT / command)]
    script = Path(sys.executable).parent / command   # the installed console script
    if script.is_file():
        return [str(script)]
    module = {"wikiart-build-shards": "wikiart.cli.build_shards", "wikiart-predict": "wikiart.cli.predict"}[command]
    return [sys.executable, "-m", module]


def run_subprocess(command: str, argv: list[str]) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*command_line(command), *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stderr


def last_value(argv: list[str], flag: str) -> Path | None:
    """The value of the last `flag` in argv (argparse keeps the last one)."""
    if flag not in argv:
        return None
    return Path(argv[len(argv) - argv[::-1].index(flag)])


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not argparse's usage text."""
    lines, in_usage = [], False
    for line in stderr.splitlines():
        if line.startswith("usage: "):
            in_usage = True
            continue
        if in_usage and (line.startswith(" ") or not line.strip()):
            continue
        in_usage = False
        if line.strip():
            lines.append(line)
    return lines


@pytest.mark.parametrize("row_id, command, args, needles", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_clear_line_nonzero_exit_and_no_output(row_id, command, args, needles, inputs, tmp_path):
    values = {**inputs, "out": str(tmp_path / "out")}
    argv = [a.format(**values) for a in [*BASE_ARGS[command], *args]]
    needles = [n.format(**values) for n in needles]
    out = last_value(argv, "--out")
    watched = [Path(inputs["empty_dir"]).parent, Path(inputs["shards"])]   # every input, held --out dirs too
    before = tree_state(*watched)
    out_existed = out is not None and out.exists()

    subprocess_row = row_id in SUBPROCESS_ROWS or os.environ.get("WIKIART_CLI_ERRORS_SUBPROCESS") == "1"
    code, stderr = (run_subprocess if subprocess_row else run_in_process)(command, argv)

    assert code != 0, f"{row_id}: accepted (exit 0)\n{stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if out is not None and not out_existed:
        assert not out.exists(), f"{row_id} created --out {out}: {sorted(p.name for p in out.rglob('*'))}"
    assert tree_state(*watched) == before, f"{row_id} changed an input or a pre-existing --out"
    assert not Path(inputs["nowhere"]).exists()


def test_missing_images_with_allow_missing_build_from_the_rest_and_record_the_skips(inputs, tmp_path):
    from wikiart.formats.manifest import load_manifest
    from wikiart.cli.build_shards import main

    out = tmp_path / "shards"
    argv = ["--images-root", inputs["missing_images"], "--csv-dir", inputs["missing_csvs"], "--out", str(out),
            "--workers", "0", "--no-progress", "--allow-missing"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    manifest = load_manifest(out)
    assert manifest.num_samples("train") + manifest.num_samples("val") == len(ARTGAN_IMAGES) - len(MISSING_IMAGES)
    skipped = {entry["source"]: entry["reason"] for entry in manifest.skipped}
    assert set(skipped) == set(MISSING_IMAGES)
    assert all(reason.startswith("missing") for reason in skipped.values())
    assert manifest.source["missing"] == len(MISSING_IMAGES)
    assert f"{len(MISSING_IMAGES)} skipped" in stdout.getvalue()
    assert all(f"skipped {rel}" in stdout.getvalue() for rel in MISSING_IMAGES)


@pytest.mark.slow
@pytest.mark.parametrize("row_id", ["train-out-holds-another-run", "train-resume-other-classes"])
def test_two_ranks_refuse_alike_without_waiting_on_each_other(row_id, inputs, tmp_path):
    """Under `accelerate launch` with 2 ranks every rank reaches the same verdict (the main
    process's --out check is broadcast; the checkpoint checks run on every rank), so both exit
    with the one-line error instead of one waiting at a barrier; and nothing is written."""
    (_, command, args, needles), = [r for r in ROWS if r[0] == row_id]
    values = {**inputs, "out": str(tmp_path / "out")}
    argv = [a.format(**values) for a in [*BASE_ARGS[command], *args, "--collective-timeout", "120"]]
    before = tree_state(Path(inputs["empty_dir"]).parent)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--num_processes", "2",
           "--main_process_port", str(free_port()), str(ROOT / command), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{command}: error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], proc.stderr[-3000:]   # one line per rank
    assert all(needle.format(**values) in errors[0] for needle in needles)
    assert not (tmp_path / "out").exists()
    assert tree_state(Path(inputs["empty_dir"]).parent) == before
