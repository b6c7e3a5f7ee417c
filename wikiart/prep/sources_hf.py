"""Hugging Face `datasets` source: hub name (streamed), save_to_disk directory, or parquet files.

No validation split comes with huggan/wikiart, so one is derived: stratified by style and
decided by a salted hash of each row's key (`sources.stratified_val_split`), the same on
every run and machine. Class names come from the ClassLabel features; "Unknown Artist" and
"Unknown Genre" become -1 and leave the class list unless `keep_unknown`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..formats.labels import BASE_TASKS, LabelMap
from ..runtime.netprobe import unreachable
from .sources import Record, Source, SourceError, assign_splits, drop_unlabelled


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (None if it can); never blocks longer than `timeout`."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    return unreachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


class HFSource(Source):
    """A `datasets` dataset with an `image` column and ClassLabel `artist`/`genre`/`style` columns.

    A save_to_disk directory is read with random access; parquet files and hub names are
    streamed (`sequential`): the index pass reads only the label columns, the image pass
    streams rows in order. Keys are row positions, so the split is stable for the same data.
    """

    kind = "hf"

    def __init__(self, name_or_path: str, split: str = "train", tasks: Sequence[str] | None = None,
                 keep_unknown: bool = False, val_frac: float = 0.1):
        super().__init__(tasks)
        import datasets  # heavy import, only for this source
        datasets.disable_progress_bars()
        self.name, self.hf_split, self.keep_unknown, self.val_frac = name_or_path, split, keep_unknown, val_frac
        self.local = Path(name_or_path)
        self.disk, self.parquet = None, None
        if self.local.exists():
            self._open_local()
        else:
            self._check_hub()
        self.sequential = self.disk is None
        self._features()

    def _open_local(self) -> None:
        import datasets
        if (self.local / "dataset_dict.json").is_file() or (self.local / "state.json").is_file():
            loaded = datasets.load_from_disk(str(self.local))
            if isinstance(loaded, datasets.DatasetDict):
                if self.hf_split not in loaded:
                    raise SourceError(f"--hf-dataset {self.local}: no split {self.hf_split!r} "
                                      f"(it has {list(loaded)}; use --hf-split)")
                loaded = loaded[self.hf_split]
            self.disk = loaded
            return
        files = [str(self.local)] if self.local.is_file() else self._parquet_files_of_split()
        if not files or any(not f.endswith(".parquet") for f in files):
            raise SourceError(f"--hf-dataset {self.local}: neither a save_to_disk directory nor parquet files")
        self.parquet = files

    def _parquet_files_of_split(self) -> list[str]:
        """The folder's parquet files of --hf-split, by the Hub's naming rules that `datasets`
        applies (data/train-00000-of-00002.parquet, test/x.parquet, ...; files named after no
        split are all "train")."""
        from datasets.data_files import DataFilesDict, get_data_patterns
        try:
            splits = DataFilesDict.from_patterns(get_data_patterns(str(self.local)), base_path=str(self.local))
        except FileNotFoundError:  # datasets' EmptyDatasetError: no data file at all
            return []
        parquet = {str(name): sorted(f for f in files if f.endswith(".parquet")) for name, files in splits.items()}
        parquet = {name: files for name, files in parquet.items() if files}
        # Once some file is named after a split, datasets drops the ones that are not: refuse that
        left_out = sorted({str(f) for f in self.local.rglob("*.parquet")} - {f for fs in parquet.values() for f in fs})
        if left_out:
            raise SourceError(f"--hf-dataset {self.local}: {len(left_out)} parquet file(s) belong to no split by "
                              f"their names (e.g. {left_out[0]}) while others do ({sorted(parquet)}); name "
                              f"them <split>-NNNNN-of-NNNNN.parquet or move them out")
        if parquet and self.hf_split not in parquet:
            raise SourceError(f"--hf-dataset {self.local}: no parquet files of split {self.hf_split!r} "
                              f"(it has {sorted(parquet)}; use --hf-split)")
        return parquet.get(self.hf_split, [])

    def _check_hub(self) -> None:
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", self.name):
            raise SourceError(f"--hf-dataset {self.name}: not a local path and not a hub name like huggan/wikiart")
        reason = _hub_unreachable()
        if reason:
            raise SourceError(
                f"--hf-dataset {self.name}: no such local path, and the Hugging Face Hub is not reachable "
                f"({reason}); on a machine "
                f"with internet run `huggingface-cli download {self.name} --repo-type dataset --local-dir DIR` "
                f"(or datasets.load_dataset('{self.name}', split='train').save_to_disk(DIR)), copy DIR here "
                "and pass --hf-dataset DIR")

    def _stream(self, columns: list[str] | None):
        """A streaming IterableDataset; parquet reads only `columns` (None: all)."""
        import datasets
        if self.parquet:
            args, kwargs = ("parquet",), {"data_files": self.parquet, "split": "train"}
        else:
            args, kwargs = (self.name,), {"split": self.hf_split}
        try:
            try:
                return datasets.load_dataset(*args, **kwargs, streaming=True, columns=columns)
            except (TypeError, ValueError):  # a builder without column selection
                stream = datasets.load_dataset(*args, **kwargs, streaming=True)
                return stream.select_columns(columns) if columns else stream
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise SourceError(f"--hf-dataset {self.name}: could not open the dataset: {exc}") from None

    def _features(self) -> None:
        import datasets
        features = self.disk.features if self.disk is not None else self._stream(None).features
        if not features or "image" not in features:
            raise SourceError(f"--hf-dataset {self.name}: no 'image' column (columns: {list(features or [])})")
        available = [t for t in BASE_TASKS if isinstance(features.get(t), datasets.ClassLabel)]
        if not available:
            raise SourceError(f"--hf-dataset {self.name}: no ClassLabel column artist, genre or style")
        self.tasks = self._select_tasks(available)
        self.maps = {t: LabelMap(features[t].names, keep_unknown=self.keep_unknown) for t in self.tasks}
        self.classes = {t: m.names for t, m in self.maps.items()}

    def _label_rows(self) -> Iterator[dict[str, int]]:
        if self.disk is not None:
            columns = self.disk.select_columns(self.tasks).to_dict()
            return (dict(zip(self.tasks, values)) for values in zip(*(columns[t] for t in self.tasks)))
        return iter(self._stream(self.tasks))

    def index(self) -> list[Record]:
        records = []
        for pos, row in enumerate(self._label_rows()):
            try:
                labels = {t: self.maps[t](row[t]) for t in self.tasks}
            except ValueError as exc:
                raise SourceError(f"--hf-dataset {self.name}: row {pos}: {exc}") from None
            records.append(Record(key=f"hf-{pos:07d}", labels=labels, split="train",
                                  source=f"{self.name}#{pos}", pos=pos))
        if not records:
            raise SourceError(f"--hf-dataset {self.name}: the dataset is empty")
        records, unlabelled = drop_unlabelled(records)
        assign_splits(records, self.val_frac)
        self.stats.update(name=self.name, split=self.hf_split, rows=len(records) + unlabelled,
                          unlabelled_dropped=unlabelled, keep_unknown=self.keep_unknown,
                          access="random" if self.disk is not None else "streaming")
        return records

    def iter_images(self, records: Sequence[Record]) -> Iterator[Record]:
        import datasets
        image_feature = datasets.Image(decode=False)
        if self.disk is not None:
            table = self.disk.select_columns(["image"]).cast_column("image", image_feature)
            for rec in records:
                yield dataclasses.replace(rec, image=self._payload(table[rec.pos]["image"]))
            return
        wanted = {rec.pos: rec for rec in records}
        stream = self._stream(["image"]).cast_column("image", image_feature)
        for pos, row in enumerate(stream):
            if pos in wanted:
                yield dataclasses.replace(wanted.pop(pos), image=self._payload(row["image"]))
                if not wanted:
                    return

    @staticmethod
    def _payload(image: dict[str, Any] | None) -> bytes | str:
        if not image:
            return b""
        return image.get("bytes") or image.get("path") or b""
