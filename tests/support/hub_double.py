"""A recording stand-in for `huggingface_hub.HfApi` (the Hub cannot be reached from the tests).

`RecordingHfApi` keeps the "remote" repo in a directory and logs every call (with the files of
each uploaded folder and the text of its README.md) to `calls.jsonl`, so it also serves a
train.py subprocess: `WIKIART_HUB_API=tests.support.hub_double:RecordingHfApi`,
`WIKIART_HUB_DOUBLE_DIR=DIR` (and `WIKIART_HUB_DOUBLE_FAIL=N` to fail the first N calls), with the
repository on PYTHONPATH (`tests.support.hub.double_env`). Every
call is bound to the real `HfApi` method's signature, so a call the real client would reject
fails here too. It can fail N times (`fail_times`, `error`) or hang until an Event is set.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import os
import shutil
import threading
from pathlib import Path

import httpx2
from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.hf_api import RepoFile
from huggingface_hub import errors as hf_errors


def http_error(status: int, message: str, cls: type = hf_errors.HfHubHTTPError) -> hf_errors.HfHubHTTPError:
    """What huggingface_hub raises for an HTTP error status (429, 503, 404...)."""
    response = httpx2.Response(status, request=httpx2.Request("POST", "https://huggingface.co/api/x"))
    return cls(message, response=response)


class RecordingHfApi:
    """A stand-in for HfApi: records calls, can fail N times or block on an Event."""

    def __init__(self, root: str | Path | None = None, fail_times: int | None = None,
                 error: BaseException | None = None, block: threading.Event | None = None):
        self.root = Path(root or os.environ["WIKIART_HUB_DOUBLE_DIR"])
        self.root.mkdir(parents=True, exist_ok=True)
        self.fail_times = int(os.environ.get("WIKIART_HUB_DOUBLE_FAIL", 0)) if fail_times is None else fail_times
        self.error = error or http_error(503, "503 Service Unavailable")
        self.block, self.started = block, threading.Event()

    def __call__(self) -> "RecordingHfApi":  # so an instance can serve as hub.repo.API_FACTORY
        return self

    def remote(self, repo_id: str) -> Path:
        return self.root / "remote" / repo_id

    def calls(self, name: str | None = None) -> list[dict]:
        path = self.root / "calls.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r for r in rows if name is None or r["call"] == name]

    def _record(self, name: str, args: tuple, kwargs: dict, **extra) -> None:
        inspect.signature(getattr(HfApi, name)).bind(None, *args, **kwargs)  # would HfApi accept it?
        row = {"call": name, "pid": os.getpid(), "thread": threading.current_thread().name,
               **{k: v for k, v in kwargs.items() if isinstance(v, (str, int, bool, list, type(None)))}, **extra}
        with (self.root / "calls.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.fail_times > 0:
            self.fail_times -= 1
            raise self.error

    def create_repo(self, repo_id: str, **kwargs) -> str:
        self._record("create_repo", (repo_id,), kwargs, repo_id=repo_id)
        self.remote(repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/{repo_id}"

    def _commit(self, repo_id: str, message: str) -> CommitInfo:
        n = len(self.calls("upload_folder")) + len(self.calls("upload_file"))
        oid = hashlib.sha1(f"{repo_id}{n}".encode()).hexdigest()
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
                          commit_message=message, commit_description="", oid=oid)

    def upload_folder(self, **kwargs) -> CommitInfo:
        self.started.set()
        if self.block is not None:
            assert self.block.wait(60), "test never released the upload"
        folder = Path(kwargs["folder_path"])
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        present = sorted(files)  # the whole folder at the time of the call (a build may be going on)
        allow = kwargs.get("allow_patterns")  # as HfApi filters: fnmatch on the relative path
        allow = [allow] if isinstance(allow, str) else allow
        if allow is not None:
            files = {rel: p for rel, p in files.items() if any(fnmatch.fnmatch(rel, pat) for pat in allow)}
        readme = files["README.md"].read_text() if "README.md" in files else None
        self._record("upload_folder", (), kwargs, files=sorted(files), readme=readme, present=present)
        if not self.remote(kwargs["repo_id"]).is_dir():
            raise http_error(404, "404 repo not found", hf_errors.RepositoryNotFoundError)
        for rel, path in files.items():
            (self.remote(kwargs["repo_id"]) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, self.remote(kwargs["repo_id"]) / rel)
        return self._commit(kwargs["repo_id"], kwargs.get("commit_message") or "")

    def upload_file(self, **kwargs) -> CommitInfo:
        data = kwargs["path_or_fileobj"]
        self._record("upload_file", (), kwargs, text=data.decode() if isinstance(data, bytes) else None)
        target = self.remote(kwargs["repo_id"]) / kwargs["path_in_repo"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return self._commit(kwargs["repo_id"], kwargs.get("commit_message") or "")

    def list_repo_tree(self, repo_id: str, **kwargs) -> list[RepoFile]:
        """The repo's files as the Hub lists them; every file counts as LFS (its sha256 pointer)."""
        self._record("list_repo_tree", (repo_id,), kwargs, repo_id=repo_id)
        remote = self.remote(repo_id)
        if not remote.is_dir():
            raise http_error(404, "404 repo not found", hf_errors.RepositoryNotFoundError)
        return [RepoFile(path=p.relative_to(remote).as_posix(), size=p.stat().st_size, oid="",
                         lfs={"size": p.stat().st_size, "oid": hashlib.sha256(p.read_bytes()).hexdigest(),
                              "pointerSize": 0})
                for p in sorted(remote.rglob("*")) if p.is_file()]

    def hf_hub_download(self, repo_id: str, filename: str, **kwargs) -> str:
        self._record("hf_hub_download", (repo_id, filename), kwargs, repo_id=repo_id)
        if not self.remote(repo_id).is_dir():
            raise http_error(404, "404 repo not found", hf_errors.RepositoryNotFoundError)
        if not (self.remote(repo_id) / filename).is_file():
            raise hf_errors.EntryNotFoundError(f"404 {filename} not found")
        target = Path(kwargs["local_dir"]) / filename
        shutil.copy2(self.remote(repo_id) / filename, target)
        return str(target)

    def snapshot_download(self, repo_id: str, **kwargs) -> str:
        self._record("snapshot_download", (repo_id,), kwargs, repo_id=repo_id)
        remote = self.remote(repo_id)
        if not remote.is_dir():
            raise http_error(404, "404 repo not found", hf_errors.RepositoryNotFoundError)
        patterns = kwargs.get("allow_patterns") or ["*"]
        patterns = [patterns] if isinstance(patterns, str) else patterns
        for path in remote.rglob("*"):
            rel = path.relative_to(remote).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in patterns):
                (Path(kwargs["local_dir"]) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, Path(kwargs["local_dir"]) / rel)
        return str(kwargs["local_dir"])
