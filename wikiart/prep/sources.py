"""Sources: readers that turn raw WikiArt into records (key, image, labels per task, split).

Every source works in two passes so the builder never holds images in memory:
`index()` reads only keys, labels and splits (cheap: CSV rows, label columns, seeds);
`iter_images(records)` then attaches the image (a path, bytes, or a synthetic painting spec)
to each record, in the order given, or in source order for a `sequential` (streaming) source.

Sources: `ArtGANSource` (image tree + split CSVs), `HFSource` (a `datasets` dataset: hub name,
save_to_disk directory or parquet files; in sources_hf.py), `SyntheticSource` (procedural, see wikiart.prep.synthetic).
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Hashable, Iterator, Sequence

from ..formats.labels import ARTGAN_CLASSES, BASE_TASKS, MISSING, check_label
from .synthetic import SyntheticPainting, class_names, make_painting

SPLIT_SALT = "wikiart-val-v1"   # changing it reshuffles every derived val split: don't
DEFAULT_STRATIFY = ("style", "genre", "artist")   # first task present decides the strata


class SourceError(ValueError):
    """Bad source input (missing root, bad CSV line, offline hub...); the message names it."""


@dataclasses.dataclass
class Record:
    key: str                      # stable, unique, no dots (the WebDataset sample key)
    labels: dict[str, int]        # one entry per task of the source, -1 = missing
    split: str                    # "train" or "val"
    source: str                   # provenance written to the sample json (relative path, row)
    pos: int = 0                  # position in source order
    size_hint: int = 0            # bytes of the original if known (shard size planning)
    image: Any = None             # bytes | path str | SyntheticPainting, set by iter_images
    # ArtGAN: per label, the split of the file that gave it ("train" for a painting the leak rule
    # moved to val from another task's train file). The seed's combined experiment inner-joins
    # the train files and the val files apart, so it needs to know (wikiart.data.loader.LabelFilter).
    label_splits: dict[str, str] | None = None


class Source:
    """Base class: subclasses set `classes` and implement `index`, `_image` and `describe`."""

    kind = "source"
    sequential = False            # True: images can only be read in source order (streaming)

    def __init__(self, tasks: Sequence[str] | None = None):
        self.want_tasks = tuple(tasks) if tasks else None
        self.classes: dict[str, list[str]] = {}
        self.skipped: list[dict[str, str]] = []
        self.moved_to_val = 0
        self.stats: dict[str, Any] = {}

    def index(self) -> list[Record]:
        raise NotImplementedError

    def _image(self, record: Record) -> Any:
        raise NotImplementedError

    def iter_images(self, records: Sequence[Record]) -> Iterator[Record]:
        """Yield the given records with `image` set (random-access sources keep the order)."""
        for rec in records:
            yield dataclasses.replace(rec, image=self._image(rec))

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, **self.stats}

    def _select_tasks(self, available: Sequence[str]) -> list[str]:
        if not self.want_tasks:
            return list(available)
        absent = [t for t in self.want_tasks if t not in available]
        if absent:
            raise SourceError(f"--tasks: {absent} not available from this source (it has {list(available)})")
        return [t for t in available if t in self.want_tasks]


def make_key(text: str, prefix: str = "") -> str:
    """A stable WebDataset key from a path or id: readable slug + 8 hex of its hash, no dots."""
    stem = re.sub(r"\.[A-Za-z0-9]{2,5}$", "", text)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:64]
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{prefix}{slug}-{digest}" if slug else f"{prefix}{digest}"


def _unit_hash(key: str) -> float:
    digest = hashlib.sha256(f"{SPLIT_SALT}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def stratified_val_split(keys: Sequence[str], strata: Sequence[Hashable], val_frac: float) -> list[bool]:
    """Deterministic stratified split: True = val.

    Within each stratum the keys are ranked by a salted hash and the first round(frac * n)
    go to val, so the split depends only on the set of (key, stratum) pairs: not on order,
    seed, machine or process count.
    """
    if not 0.0 <= val_frac < 1.0:
        raise SourceError(f"--val-frac: {val_frac} must be in [0, 1)")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, stratum in enumerate(strata):
        groups[stratum].append(i)
    is_val = [False] * len(keys)
    for members in groups.values():
        members.sort(key=lambda i: (_unit_hash(keys[i]), keys[i]))
        for i in members[:round(val_frac * len(members))]:
            is_val[i] = True
    return is_val


def assign_splits(records: list[Record], val_frac: float) -> None:
    """Set `split` on records of a source without its own validation split."""
    tasks = list(records[0].labels) if records else []
    task = next((t for t in DEFAULT_STRATIFY if t in tasks), None)
    strata = [r.labels[task] if task else 0 for r in records]
    for rec, val in zip(records, stratified_val_split([r.key for r in records], strata, val_frac)):
        rec.split = "val" if val else "train"


def drop_unlabelled(records: list[Record]) -> tuple[list[Record], int]:
    kept = [r for r in records if any(v != MISSING for v in r.labels.values())]
    return kept, len(records) - len(kept)


# ----------------------------------------------------------------------------------------------
# ArtGAN: image tree + split files
# ----------------------------------------------------------------------------------------------
_ROW = re.compile(r"(.+?)\s*,+\s*(-?\d+)\s*")


def _find_file(csv_dir: Path, names: Sequence[str]) -> Path | None:
    """The first of `names` in csv_dir or one of its subfolders (the ArtGAN repository keeps
    the files in `WikiArt Dataset/{Artist,Genre,Style}/`)."""
    folders = [csv_dir] + sorted(p for p in csv_dir.iterdir() if p.is_dir())
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def find_split_files(csv_dir: Path) -> dict[tuple[str, str], Path]:
    """(task, split) -> file, for the ArtGAN names (`artist_train`, `genre_val.csv`, ...)."""
    found = {}
    for task in BASE_TASKS:
        for split in ("train", "val"):
            path = _find_file(csv_dir, [f"{task}_{split}{suffix}" for suffix in ("", ".csv", ".txt")])
            if path is not None:
                found[(task, split)] = path
    return found


def read_text_lines(path: Path) -> list[str]:
    """A split or class file's lines (UTF-8, with or without a byte-order mark)."""
    raw = path.read_bytes()
    data = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line_no = data[:exc.start].count(b"\n") + 1
        raise SourceError(f"{path}:{line_no}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                          f"{exc.start + len(raw) - len(data)}); re-save the file as UTF-8") from None


def read_class_file(path: Path) -> list[str]:
    """`index name` per line, indices 0..n-1 in order."""
    names = []
    for line_no, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(names):
            raise SourceError(f"{path}:{line_no}: expected '{len(names)} <class name>', got {line.strip()!r}")
        names.append(parts[1].strip())
    if not names:
        raise SourceError(f"{path}: class file is empty")
    return names


def check_relpath(rel: str, where: str) -> str:
    """Normalise a CSV path; reject paths that could escape the image root."""
    rel = rel.strip().replace("\\", "/")
    posix = PurePosixPath(rel)
    if not rel or posix.is_absolute() or re.match(r"^[A-Za-z]:", rel) or ".." in posix.parts:
        raise SourceError(f"{where}: path {rel!r} escapes the image root (absolute or '..')")
    return str(posix)


def read_split_file(path: Path, num_classes: int) -> list[tuple[str, int, int]]:
    """Rows (relative path, label, line number) of one ArtGAN split file.

    Handles both real layouts: headerless `path,label` and the artist files' header line
    `(Path to image),, (Groundtruth class)`, blank line and `,,` separator.
    """
    rows = []
    for line_no, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        match = _ROW.fullmatch(line.strip())
        if match is None:
            if not rows and ("Path to image" in line or line.lstrip().startswith("(")):
                continue  # the artist files' header line
            raise SourceError(f"{path}:{line_no}: expected 'relative/path.jpg,label', got {line.strip()!r}")
        where = f"{path}:{line_no}"
        try:
            label = check_label(int(match.group(2)), num_classes, where)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        if label == MISSING:
            raise SourceError(f"{where}: label -1 is not a class")
        rows.append((check_relpath(match.group(1), where), label, line_no))
    if not rows:
        raise SourceError(f"{path}: no rows (empty split file)")
    return rows


class ArtGANSource(Source):
    """The ArtGAN WikiArt download: `--images-root` image tree + `--csv-dir` split files."""

    kind = "artgan"

    def __init__(self, images_root: str | Path, csv_dir: str | Path, tasks: Sequence[str] | None = None,
                 allow_missing: bool = False):
        super().__init__(tasks)
        self.root, self.csv_dir, self.allow_missing = Path(images_root), Path(csv_dir), allow_missing
        if not self.root.is_dir():
            raise SourceError(f"--images-root: directory not found: {self.root}")
        if not self.csv_dir.is_dir():
            raise SourceError(f"--csv-dir: directory not found: {self.csv_dir}")

    def _load_classes(self, tasks: Sequence[str]) -> dict[str, str]:
        origin = {}
        for task in tasks:
            path = _find_file(self.csv_dir, [f"{task}_class.txt", f"{task}_class"])
            self.classes[task] = read_class_file(path) if path else list(ARTGAN_CLASSES[task])
            origin[task] = str(path.relative_to(self.csv_dir)) if path else "built-in"
        return origin

    def index(self) -> list[Record]:
        files = find_split_files(self.csv_dir)
        if not files:
            raise SourceError(f"--csv-dir {self.csv_dir}: no split files (expected e.g. artist_train, "
                              "genre_train.csv, style_val.csv)")
        tasks = self._select_tasks(sorted({t for t, _ in files}, key=BASE_TASKS.index))
        class_origin = self._load_classes(tasks)
        labels: dict[str, dict[str, int]] = defaultdict(dict)
        member: dict[str, set[tuple[str, str]]] = defaultdict(set)   # path -> {(task, split)}
        duplicates, conflicts = 0, []
        # A task's val file first: a painting it lists goes to val, so its label there must win
        # over a conflicting one in the train file (which is then the one reported).
        for (task, split), path in sorted(files.items(), key=lambda item: (item[0][0], item[0][1] != "val")):
            if task not in tasks:
                continue
            for rel, label, line_no in read_split_file(path, len(self.classes[task])):
                if task in labels[rel]:
                    duplicates += 1
                    if labels[rel][task] != label:
                        conflicts.append(f"{path.name}:{line_no} {rel}")
                else:
                    labels[rel][task] = label
                member[rel].add((task, split))
        records = self._make_records(labels, member, tasks)
        self._count_moved(member, tasks)
        self.stats.update(images_root=str(self.root.resolve()), csv_dir=str(self.csv_dir.resolve()),
                          split_files={f"{t}_{s}": str(p.relative_to(self.csv_dir))
                                       for (t, s), p in sorted(files.items()) if t in tasks},
                          class_files=class_origin, images=len(records), duplicate_rows=duplicates,
                          conflicting_labels=len(conflicts), conflict_examples=conflicts[:10])
        return self._drop_missing(records)

    def _make_records(self, labels, member, tasks) -> list[Record]:
        records = []
        for pos, rel in enumerate(sorted(labels)):
            in_val = any(split == "val" for _, split in member[rel])
            records.append(Record(key=make_key(rel), labels={t: labels[rel].get(t, MISSING) for t in tasks},
                                  split="val" if in_val else "train", source=rel, pos=pos,
                                  label_splits={t: "val" if (t, "val") in member[rel] else "train"
                                                for t in sorted(labels[rel])}))
        return records

    def _count_moved(self, member, tasks) -> None:
        """Val images that another task's train split also lists: they go to val (leak rule)."""
        moved_by_task = {}
        for task in tasks:
            moved_by_task[task] = sum(1 for m in member.values() if (task, "val") in m
                                      and any(s == "train" and t != task for t, s in m))
        self.moved_to_val = sum(1 for m in member.values() if {s for _, s in m} == {"train", "val"})
        self.stats["moved_by_task"] = moved_by_task

    def _drop_missing(self, records: list[Record]) -> list[Record]:
        missing = []
        for rec in records:
            try:
                rec.size_hint = (self.root / rec.source).stat().st_size
            except OSError:
                missing.append(rec)
        if missing and not self.allow_missing:
            examples = ", ".join(r.source for r in missing[:3])
            raise SourceError(f"--images-root {self.root}: {len(missing)} of {len(records)} images listed in "
                              f"{self.csv_dir} are missing (e.g. {examples}); pass --allow-missing to build "
                              "from the rest")
        gone = {r.key for r in missing}
        self.skipped = [{"key": r.key, "source": r.source, "split": r.split,
                         "reason": "missing: not found under --images-root"} for r in missing]
        self.stats["missing"] = len(missing)
        return [r for r in records if r.key not in gone]

    def _image(self, record: Record) -> str:
        return str(self.root / record.source)


# ----------------------------------------------------------------------------------------------
# Synthetic mini-WikiArt
# ----------------------------------------------------------------------------------------------
class SyntheticSource(Source):
    """`--synthetic N`: procedural paintings (see wikiart.prep.synthetic); val split by stratified hash."""

    kind = "synthetic"

    def __init__(self, n: int, seed: int = 0, n_artists: int = 8, n_genres: int = 6, n_styles: int = 6,
                 max_side: int = 1500, val_frac: float = 0.1, tasks: Sequence[str] | None = None):
        super().__init__(tasks)
        if n < 1:
            raise SourceError(f"--synthetic: {n} must be >= 1")
        try:
            all_classes = class_names(n_artists, n_genres, n_styles)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        self.n, self.seed, self.max_side, self.val_frac = n, seed, max_side, val_frac
        self.sizes = (n_artists, n_genres, n_styles)
        self.classes = {t: all_classes[t] for t in self._select_tasks(list(all_classes))}

    def painting(self, index: int) -> SyntheticPainting:
        return make_painting(index, self.seed, *self.sizes, max_side=self.max_side)

    def index(self) -> list[Record]:
        records = []
        for i in range(self.n):
            labels = dict(self.painting(i).labels)
            records.append(Record(key=f"synthetic-{i:07d}", labels={t: labels[t] for t in self.classes},
                                  split="train", source=f"synthetic:{self.seed}:{i}", pos=i))
        records, unlabelled = drop_unlabelled(records)
        assign_splits(records, self.val_frac)
        self.stats.update(n=self.n, seed=self.seed, max_side=self.max_side, unlabelled_dropped=unlabelled,
                          n_artists=self.sizes[0], n_genres=self.sizes[1], n_styles=self.sizes[2])
        return records

    def _image(self, record: Record) -> SyntheticPainting:
        return self.painting(record.pos)


def open_source(cfg: Any) -> Source:
    """The source a BuildConfig asks for (exactly one of synthetic / ArtGAN / HF)."""
    chosen = [name for name, given in (("--synthetic", cfg.synthetic is not None),
                                       ("--images-root/--csv-dir", bool(cfg.images_root or cfg.csv_dir)),
                                       ("--hf-dataset", bool(cfg.hf_dataset))) if given]
    if len(chosen) != 1:
        raise SourceError("give exactly one source: --synthetic N, --images-root DIR --csv-dir DIR, or "
                          f"--hf-dataset NAME_OR_PATH (got {chosen or 'none'})")
    tasks = list(cfg.tasks) or None
    if cfg.synthetic is not None:
        return SyntheticSource(cfg.synthetic, cfg.seed, cfg.synthetic_artists, cfg.synthetic_genres,
                               cfg.synthetic_styles, cfg.synthetic_max_side, cfg.val_frac, tasks)
    if cfg.hf_dataset:
        from .sources_hf import HFSource  # imports `datasets`, only when asked for
        return HFSource(cfg.hf_dataset, split=cfg.hf_split, tasks=tasks, keep_unknown=cfg.keep_unknown,
                        val_frac=cfg.val_frac)
    if not cfg.images_root or not cfg.csv_dir:
        raise SourceError("--images-root and --csv-dir must be given together")
    return ArtGANSource(cfg.images_root, cfg.csv_dir, tasks, cfg.allow_missing)
