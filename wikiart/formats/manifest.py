"""`manifest.json`: the single source of truth beside the shards.

Written by the shard builder, read by every later step. It holds the tasks and class names,
per split the shard files with sample counts, byte sizes and sha256, per-class counts per
task, the build parameters, the source, and the inputs that were skipped with reasons.

Shard members (one sample per painting): `__key__` (stable, no dots), `jpg` (RGB JPEG),
`json` = {"key", "labels": {task: int, -1 = missing}, "source", "orig_size": [w, h]}.

The manifest's folder (its `root`) is a local directory or a URL (`formats.location`); a loaded
manifest also carries the `--shard-cache` directory its remote shards are read through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from .files import write_json
from .location import RemoteShardError, child, is_remote, local_path, read_bytes
from .shard import ShardSource

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")


class ManifestError(ValueError):
    """The shard directory or its manifest is missing, malformed or inconsistent."""


@dataclasses.dataclass
class ShardInfo:
    name: str
    num_samples: int
    bytes: int
    sha256: str


@dataclasses.dataclass
class SplitInfo:
    shards: list[ShardInfo] = dataclasses.field(default_factory=list)
    class_counts: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)


@dataclasses.dataclass
class Manifest:
    classes: dict[str, list[str]]
    splits: dict[str, SplitInfo]
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    build: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    moved_to_val: int = 0
    format_version: int = FORMAT_VERSION
    root: str | Path | None = dataclasses.field(default=None, compare=False)  # a directory or a URL
    cache: str | None = dataclasses.field(default=None, compare=False)       # --shard-cache

    @property
    def tasks(self) -> list[str]:
        return list(self.classes)

    def class_names(self, task: str) -> list[str]:
        if task not in self.classes:
            raise ManifestError(f"task {task!r} is not in the manifest (it has {self.tasks})")
        return self.classes[task]

    def num_classes(self, task: str) -> int:
        return len(self.class_names(task))

    def split(self, split: str) -> SplitInfo:
        if split not in self.splits:
            raise ManifestError(f"split {split!r} is not in the manifest (it has {list(self.splits)})")
        return self.splits[split]

    def num_samples(self, split: str) -> int:
        return self.split(split).num_samples

    def shard_paths(self, split: str) -> list[str]:
        if self.root is None:
            raise ManifestError("manifest has no root directory")
        return [child(self.root, check_shard_name(s.name)) for s in self.split(split).shards]

    def shard_sources(self, split: str) -> list[ShardSource]:
        """What a reader needs of each shard of `split`: where, its size and sha256, the cache."""
        cache = self.cache if self.root is not None and is_remote(self.root) else None
        return [ShardSource(path, s.bytes, s.sha256, cache)
                for path, s in zip(self.shard_paths(split), self.split(split).shards)]

    def class_counts(self, split: str, task: str) -> list[int]:
        self.class_names(task)
        return self.split(split).class_counts.get(task, [0] * self.num_classes(task))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("root")
        data.pop("cache")
        return data

    def save(self, directory: str | Path) -> Path:
        """Write atomically: a crash never leaves a half-written manifest."""
        return write_json(Path(directory) / MANIFEST_NAME, self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any], root: Path | None = None) -> "Manifest":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(f"manifest format version {version!r} is not supported "
                                f"(this wikiart reads version {FORMAT_VERSION}); rebuild the shards")
        try:
            splits = {name: SplitInfo(shards=[ShardInfo(**s) for s in info["shards"]],
                                      class_counts=dict(info.get("class_counts", {})))
                      for name, info in data["splits"].items()}
            for info in splits.values():
                for shard in info.shards:
                    check_shard_name(shard.name)
            return cls(classes={k: list(v) for k, v in data["classes"].items()}, splits=splits,
                       source=data.get("source", {}), build=data.get("build", {}),
                       skipped=list(data.get("skipped", [])), moved_to_val=data.get("moved_to_val", 0),
                       root=root)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: {exc!r}") from exc


def check_shard_name(name: Any) -> str:
    """A shard is a plain file in the shards directory: a name from a manifest never reaches
    outside it (no folders, no '..', no absolute path)."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\0" in name or ":" in name):
        raise ManifestError(f"shard name {name!r} is not a plain file name in the shards directory "
                            f"(folders, '..' and absolute paths are refused)")
    return name


def load_manifest(directory: str | Path, cache: str | Path | None = None) -> Manifest:
    """Read `DIR/manifest.json` (DIR a directory or a URL, `formats.location`); errors name the
    directory and say what to do. `cache`: the --shard-cache directory of remote shards."""
    root: str | Path = str(directory) if is_remote(directory) else local_path(directory)
    path = child(root, MANIFEST_NAME)
    if not is_remote(root):
        if not Path(root).is_dir():
            raise ManifestError(f"shards directory not found: {root}")
        if not Path(path).is_file():
            raise ManifestError(f"no {MANIFEST_NAME} in {root}: build shards first "
                                f"(wikiart-build-shards --out {root} ...)")
    try:
        data = json.loads(read_bytes(path))
    except RemoteShardError as exc:
        raise ManifestError(f"cannot read the manifest: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: malformed manifest: expected a JSON object")
    try:
        manifest = Manifest.from_json(data, root=root)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    if cache is not None and is_remote(root):
        try:
            Path(cache).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ManifestError(f"--shard-cache {cache}: cannot create it: {exc}") from exc
        manifest.cache = str(cache)
    return manifest


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
