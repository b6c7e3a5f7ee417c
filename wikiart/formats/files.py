"""Writing files and directories so that a crash leaves the old version or the new, never half.

`write_text` / `write_json` / `write_bytes` write a temporary file beside the target, fsync it and rename it
over the target (`os.replace` is atomic within one file system, which the temporary shares by
living in the same directory). `replace_directory` does the same for a whole directory that
was written under another name; `link_tree` stages a directory's files without copying them.
No torch here: the shard builder (`wikiart.prep`) writes through these too.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

_SEQ = itertools.count()  # two threads of one process never share a temporary name
OLD_SUFFIX = ".old"  # replace_directory's copy of the previous directory, until the swap is done


def temporary_name(path: Path) -> Path:
    """Where `path` is written before the rename: same directory, never a name readers look for
    (no `.json` suffix: globs such as `manifest-part-*.json` must not see a half-written file)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{next(_SEQ)}")


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically: readers see the old file or the new one."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (a PNG, ...): readers see the old file or the new one."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def writable_directory_problem(directory: Path) -> str | None:
    """Why `directory` could not be created or written (None: it can): checked before any work,
    so a bad output flag fails before anything is computed or written."""
    existing = next((p for p in [directory, *directory.parents] if p.exists()), None)
    if directory.exists() and not directory.is_dir():
        return "exists and is not a directory"
    if existing is not None and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        return f"{existing} is not a writable directory"
    return None


def write_json(path: str | Path, data: Any, *, indent: int | None = 1, sort_keys: bool = False,
               ensure_ascii: bool = False, allow_nan: bool = True) -> Path:
    """`data` as JSON (plus a final newline) written atomically. Serialised before any file is
    opened: a value JSON cannot hold (or a NaN with allow_nan=False) raises and leaves the old
    file as it was. Strict JSON with NaN as null: convert the values first, pass allow_nan=False."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii,
                      allow_nan=allow_nan) + "\n"
    return write_text(path, text)


def fsync_files(directory: Path) -> None:
    """Flush every file directly in `directory` to disk (before a rename publishes the directory)."""
    for p in directory.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


def replace_directory(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place; the old one survives until the swap."""
    old = final.with_name(final.name + OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def link_tree(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Hard-link (else copy) the files of `src` into `dst`.

    Safe for directories that are always written under a new name and renamed into place, never
    rewritten (best/, checkpoints): a later save makes new inodes and leaves the links intact.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.name in skip or not path.is_file():
            continue
        try:
            os.link(path, dst / path.name)
        except OSError:
            shutil.copy2(path, dst / path.name)
