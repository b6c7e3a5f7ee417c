"""Hub pushes, --resume hub and evaluate's card update, with HfApi replaced by
`tests.support.hub_double.RecordingHfApi`.

These drive `HubPusher` and the helpers directly, and load and push real model folders; the
runs that train or evaluate for real are in tests/integration/test_hub_training.py."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from PIL import Image

from tests.support.hub import DOUBLE_SPEC, REPO, TOKEN
from tests.support.hub_double import http_error
from wikiart.formats import checkpoint as ckpt
from wikiart.hub import repo as hub_repo
from wikiart.train import hub_sync as hub
from wikiart.config.options import parse_train_config
from wikiart.hub.client import HubError, HubPusher, RetryPolicy, Snapshot
from wikiart.formats.manifest import load_manifest
from wikiart.model.classifier import CNNRNNClassifier
from wikiart.hub.card import build_card

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def snapshot(tmp_path: Path, name: str, step: int, files: dict[str, str] | None = None) -> Snapshot:
    folder = tmp_path / "staging" / name
    for rel, text in (files or {"config.json": "{}", "training_state/state.json": f'{{"step": {step}}}'}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return Snapshot(folder, step, f"wikiart: {name}")


# ---------------------------------------------------------------------------------------------
# Checks at start
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--push-to-hub", "bad//id"], "not a valid repo id"),
    (["--push-to-hub", "user/has space"], "not a valid repo id"),
    (["--push-to-hub", "a/b/c"], "not a valid repo id"),
    (["--push-to-hub", REPO, "--hub-every", "sometimes"], "--hub-every"),
    (["--push-to-hub", REPO, "--hub-every", "0"], "--hub-every"),
    (["--resume", "hub"], "--resume hub: also pass --push-to-hub"),
])
def test_bad_hub_flags_are_rejected(args, needle, token):
    with pytest.raises(hub.HubConfigError, match=needle):
        hub.check_hub_config(parse_train_config(args))


def test_missing_token_is_reported_at_start(tmp_path, monkeypatch):
    import huggingface_hub.constants
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    with pytest.raises(hub.HubConfigError, match="no Hugging Face token"):
        hub.check_hub_config(parse_train_config(["--push-to-hub", REPO]))
    hub.check_hub_config(parse_train_config([]))  # no push: no token needed



# ---------------------------------------------------------------------------------------------
# The background pusher
# ---------------------------------------------------------------------------------------------
def test_pusher_creates_the_repo_at_the_first_push_and_uploads_snapshots(tmp_path, double):
    pusher = HubPusher(REPO, hub.make_api, private=True, policy=FAST)
    assert double.calls() == []  # nothing at construction: no network at start
    pusher.submit(snapshot(tmp_path, "a", 2))
    assert pusher.wait(10).status == "pushed"
    pusher.submit(snapshot(tmp_path, "b", 4))
    outcome = pusher.wait(10)
    assert outcome.status == "pushed" and outcome.step == 4 and outcome.commit_url.startswith(
        f"https://huggingface.co/{REPO}/commit/")
    creates = double.calls("create_repo")
    assert len(creates) == 1 and creates[0]["private"] is True and creates[0]["exist_ok"] is True
    uploads = double.calls("upload_folder")
    assert [u["commit_message"] for u in uploads] == ["wikiart: a", "wikiart: b"]
    assert uploads[0]["files"] == ["config.json", "training_state/state.json"]
    assert all(u["thread"] == "wikiart-hub-push" for u in uploads)
    assert not (tmp_path / "staging" / "a").exists()  # the pusher removes what it pushed


def test_slow_push_never_blocks_submit_and_only_the_newest_waits(tmp_path, double):
    release = threading.Event()
    double.block = release
    pusher = HubPusher(REPO, hub.make_api, policy=FAST)
    pusher.submit(snapshot(tmp_path, "first", 1))
    assert double.started.wait(10)
    for name, step in (("second", 2), ("third", 3)):  # the upload is stuck: these must return anyway
        pusher.submit(snapshot(tmp_path, name, step))
    assert not release.is_set()
    assert not (tmp_path / "staging" / "second").exists()  # replaced while waiting, never pushed
    release.set()
    assert pusher.wait(10).step == 3
    assert [u["commit_message"] for u in double.calls("upload_folder")] == ["wikiart: first", "wikiart: third"]
    assert pusher.counts == {"pushed": 2, "failed": 0, "coalesced": 1}


def test_failures_are_retried_with_backoff_then_reported(tmp_path, double):
    messages: list[str] = []
    double.fail_times, double.error = 2, http_error(429, f"429 Too Many Requests for token {TOKEN}")
    pusher = HubPusher(REPO, hub.make_api, policy=FAST, echo=messages.append)
    pusher.submit(snapshot(tmp_path, "a", 1))
    outcome = pusher.wait(10)
    assert outcome.status == "pushed" and outcome.attempts == 3
    assert len(messages) == 2 and "attempt 1/3" in messages[0] and "HfHubHTTPError: 429" in messages[0]
    double.fail_times, double.error = 99, ConnectionError(f"network is down ({TOKEN})")
    pusher.submit(snapshot(tmp_path, "b", 2))
    outcome = pusher.wait(10)
    assert outcome.status == "failed" and outcome.attempts == 3 and "ConnectionError" in outcome.error
    assert "training goes on" in messages[-1]
    assert all(TOKEN not in m for m in [*messages, outcome.error])
    double.fail_times = 0  # the worker survived: the next snapshot goes through
    pusher.submit(snapshot(tmp_path, "c", 3))
    assert pusher.wait(10).status == "pushed" and pusher.counts["failed"] == 1


def test_a_newer_snapshot_replaces_one_waiting_to_be_retried(tmp_path, double):
    double.fail_times = 1
    pusher = HubPusher(REPO, hub.make_api, policy=RetryPolicy(attempts=3, base_delay=30), echo=lambda m: None)
    pusher.submit(snapshot(tmp_path, "a", 1))
    deadline = time.monotonic() + 10
    while not double.calls() and time.monotonic() < deadline:  # the first attempt failed: 30 s backoff
        time.sleep(0.01)
    pusher.submit(snapshot(tmp_path, "b", 2))
    outcome = pusher.wait(10)  # far less than the backoff: "a" was dropped, not waited for
    assert outcome.status == "pushed" and outcome.step == 2
    assert [u["commit_message"] for u in double.calls("upload_folder")] == ["wikiart: b"]


def test_backoff_doubles_and_is_capped():
    policy = RetryPolicy(attempts=8, base_delay=5, max_delay=60)
    assert [policy.delay(i) for i in range(1, 6)] == [5, 10, 20, 40, 60]


def test_final_wait_times_out_cleanly(tmp_path, double):
    release = threading.Event()
    double.block = release
    pusher = HubPusher(REPO, hub.make_api, policy=FAST)
    pusher.submit(snapshot(tmp_path, "a", 1))
    outcome = pusher.wait(0.2)
    assert outcome.status == "timeout" and "0.2s" in outcome.error
    release.set()
    assert pusher.wait(10).status == "pushed"
    pusher.close()


def test_staged_links_survive_later_saves(tmp_path):
    best = tmp_path / "best"
    best.mkdir()
    (best / "model.safetensors").write_text("old weights")
    (best / "README.md").write_text("mixin card")
    hub.link_tree(best, tmp_path / "staged", skip=("README.md",))
    new = tmp_path / "best.tmp"
    new.mkdir()
    (new / "model.safetensors").write_text("new weights")
    ckpt.replace_directory(new, best)  # what save_best does
    assert (tmp_path / "staged" / "model.safetensors").read_text() == "old weights"
    assert not (tmp_path / "staged" / "README.md").exists()


def test_pushed_folder_loads_the_same_model(tmp_path, double, synthetic_shards, capsys):
    torch.manual_seed(0)
    names = load_manifest(synthetic_shards).classes["genre"]
    model = CNNRNNClassifier("resnet18", class_names={"genre": names}, proj_dim=8, rnn_hidden=4,
                             rnn_layers=1, image_size=32).eval()
    model.save_pretrained(tmp_path / "best")
    folder = tmp_path / "staged"
    hub.link_tree(tmp_path / "best", folder, skip=("README.md",))
    config = json.loads((folder / "config.json").read_text())
    assert config["class_names"] == {"genre": names} and config["image_size"] == 32
    assert len(config["mean"]) == len(config["std"]) == 3
    (folder / "README.md").write_text(str(build_card(REPO, config)))
    pusher = HubPusher(REPO, hub.make_api, policy=FAST)
    pusher.submit(Snapshot(folder, 1, "wikiart: model"))
    assert pusher.wait(10).status == "pushed"
    assert sorted(p.name for p in double.remote(REPO).iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = CNNRNNClassifier.from_pretrained(double.remote(REPO)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x)["genre"], loaded(x)["genre"])
    # the card's own snippet runs as written (repo id -> the pushed files, a real image)
    Image.new("RGB", (60, 40), (200, 120, 30)).save(tmp_path / "painting.jpg")
    card_text = (double.remote(REPO) / "README.md").read_text()
    snippet = card_text.split("```python\n")[1].split("```")[0]
    assert "T.Resize(35), T.CenterCrop(32)" in snippet
    snippet = snippet.replace(REPO, str(double.remote(REPO))).replace("painting.jpg", str(tmp_path / "painting.jpg"))
    exec(compile(snippet, "card-snippet", "exec"), {})
    printed = capsys.readouterr().out
    assert "{'genre': '" in printed and any(name in printed for name in names)


# ---------------------------------------------------------------------------------------------
# --resume hub and evaluate.py --push-to-hub
# ---------------------------------------------------------------------------------------------
def test_training_state_comes_back_from_the_hub(tmp_path, double):
    src = ckpt.save_checkpoint(tmp_path / "elsewhere", ckpt.TrainState(step=7, epoch=1),
                               {"w": torch.ones(3)}, {"state": {}, "param_groups": []}, {"task": "genre"})
    shutil.copytree(src, double.remote(REPO) / hub.STATE_SUBFOLDER)
    for name in ("config.json", "model.safetensors", "README.md", "notes.txt"):
        (double.remote(REPO) / name).write_text(f"remote {name}")
    run_dir = tmp_path / "run"
    path = hub.download_training_state(REPO, run_dir, policy=FAST)
    assert path == ckpt.latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000007"
    state, weights, _, extra = ckpt.load_checkpoint(path)  # weights_only loads
    assert state.step == 7 and torch.equal(weights["w"], torch.ones(3)) and extra == {"task": "genre"}
    assert "training_state/*" in double.calls("snapshot_download")[0]["allow_patterns"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["best", "checkpoints"]
    assert sorted(p.name for p in (run_dir / "best").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    (double.remote(REPO) / "config.json").write_text("newer")  # a run's own best/ is never replaced
    hub.download_training_state(REPO, run_dir, policy=FAST)
    assert (run_dir / "best" / "config.json").read_text() == "remote config.json"
    assert hub.download_training_state("painter/never-pushed", tmp_path / "fresh", policy=FAST) is None


def test_hub_down_at_resume_is_a_clear_error(tmp_path, double):
    double.fail_times, double.error = 99, ConnectionError(f"no route to host ({TOKEN})")
    with pytest.raises(ckpt.CheckpointError, match="--resume hub: download of .* failed after 3 attempt") as info:
        hub.download_training_state(REPO, tmp_path / "run", policy=FAST)
    assert TOKEN not in str(info.value)


def test_a_hub_that_cannot_be_asked_is_never_taken_for_a_missing_repo(tmp_path, double, monkeypatch):
    # huggingface_hub reports a lost connection or a 5xx on download as LocalEntryNotFoundError,
    # a subclass of EntryNotFoundError: resuming must fail, not start afresh and overwrite the repo.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    double.create_repo(REPO)
    double.fail_times, double.error = 99, hf_errors.LocalEntryNotFoundError("connection lost; not in the cache")
    with pytest.raises(ckpt.CheckpointError, match="failed after 3 attempt.*LocalEntryNotFoundError"):
        hub.download_training_state(REPO, tmp_path / "run", policy=FAST)
    with pytest.raises(HubError, match="README.md failed after 3 attempt"):
        hub.push_eval_card(REPO, {"genre/top1": 0.5}, api=double, policy=FAST)
    assert double.calls("upload_file") == []  # the pushed card was not replaced by a new one
    assert not (tmp_path / "run").exists()


def test_a_failed_attempts_files_never_pass_for_a_download(tmp_path, monkeypatch):
    # The first attempt leaves part of training_state/ and drops; on the retry the real client
    # cannot reach the Hub (nothing listens on port 9) and, finding a non-empty local_dir,
    # returns it as if downloaded. Resume must fail, not report "nothing to resume".
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    real = HfApi(endpoint="http://127.0.0.1:9", token=False)
    attempts = []

    class DroppingApi:
        def snapshot_download(self, **kwargs):
            attempts.append(kwargs["local_dir"])
            if len(attempts) == 1:
                partial = Path(kwargs["local_dir"]) / hub.STATE_SUBFOLDER
                partial.mkdir(parents=True)
                (partial / "state.json").write_text('{"step": 5}')
                raise ConnectionError("connection reset")
            return real.snapshot_download(**kwargs)

    with pytest.raises(ckpt.CheckpointError, match="failed after 3 attempt"):
        hub.download_training_state(REPO, tmp_path / "run", api=DroppingApi(), policy=FAST)
    assert len(attempts) == 3 and not (tmp_path / "run" / "checkpoints").exists()


def test_offline_mode_fails_resume_at_once_with_the_real_client(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_repo, "API_FACTORY", None)
    monkeypatch.delenv(hub_repo.API_ENV, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ckpt.CheckpointError, match="after 1 attempt.*HF_HUB_OFFLINE is set: unset it"):
        hub.download_training_state(REPO, tmp_path / "run", policy=RetryPolicy(attempts=3, base_delay=30))


def test_the_real_client_is_used_unless_a_double_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(hub_repo, "API_FACTORY", None)
    monkeypatch.delenv(hub_repo.API_ENV, raising=False)
    assert isinstance(hub.make_api(), HfApi)
    monkeypatch.setenv(hub_repo.API_ENV, DOUBLE_SPEC)
    monkeypatch.setenv("WIKIART_HUB_DOUBLE_DIR", str(tmp_path))
    assert type(hub.make_api()).__name__ == "RecordingHfApi"


def test_push_eval_card_updates_the_metrics_of_the_pushed_card(tmp_path, double):
    double.create_repo(REPO)
    card = build_card(REPO, {"class_names": {"genre": ["a", "b"]}, "backbone": "resnet18"},
                      metrics={"genre/top1": 0.5, "genre/top5": 0.875})
    (double.remote(REPO) / "README.md").write_text(str(card))
    url = hub.push_eval_card(REPO, {"genre": {"top1": 0.625, "top5": 1.0}}, split="test", api=double)
    assert url.startswith(f"https://huggingface.co/{REPO}/commit/")
    upload = double.calls("upload_file")[-1]
    assert upload["path_in_repo"] == "README.md" and "evaluation metrics" in upload["commit_message"]
    parsed = ModelCard(upload["text"])
    assert "| genre | 0.6250 | 1.0000 |" in parsed.text and "`a`" in parsed.text
    assert parsed.data.library_name == "wikiart" and TOKEN not in upload["text"]


def test_push_eval_card_creates_a_card_and_repo_when_missing(double):
    hub.push_eval_card("painter/new-model", {"genre/top1": 0.25}, model_config={"class_names": {"genre": ["a"]}},
                       private=True, api=double)
    assert double.calls("create_repo")[0]["private"] is True
    assert "| genre | 0.2500 |" in ModelCard(double.calls("upload_file")[-1]["text"]).text
    with pytest.raises(hub.HubConfigError):
        hub.push_eval_card("bad//id", {}, api=double)
