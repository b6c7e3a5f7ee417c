"""Shard builder: records -> resized JPEGs -> WebDataset tars + manifest.json.

    wikiart-build-shards --out DIR (--synthetic N | --images-root DIR --csv-dir DIR |
                                    --hf-dataset NAME_OR_PATH) [--short-side 448] ...

The build is planned before any image is touched: the source's cheap index pass gives every
record's key, labels and split; each split's records are shuffled by key with a seeded RNG
(keys, not image bytes: memory stays small) and cut into even shards. Everything after that
is a pure function of the plan, so `--num-parts K --part I` (shard i -> part i % K) plus
`--merge-manifests` gives the same files as one build, and a re-run reuses finished shards.
The command line (wikiart.cli.build_shards) adds the exit codes and `--verify`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..config.options import opt, parse_config
from ..formats.labels import BASE_TASKS
from ..formats.manifest import MANIFEST_NAME, SPLITS, Manifest, ShardInfo, SplitInfo
from .write import (STATE_DIR, EncodeParams, ShardPlan, ShardResult, Throughput, atomic_write_json,
                        completed_shard, worker_pool, write_shards)
from .sources import Record, Source, open_source

PROG = "wikiart-build-shards"
VERIFY_OUT = "@out"   # what a bare `--verify` means: check --out after building
# Fields that do not change what is built (where, how fast, which part): kept out of the fingerprint.
NOT_BUILD_PARAMS = ("out", "images_root", "csv_dir", "hf_dataset", "allow_missing", "workers", "num_parts",
                    "part", "merge_manifests", "verify", "overwrite", "progress", "push_to_hub", "hub_private")


class BuildError(ValueError):
    """The build cannot proceed; the message names the input or directory."""


@dataclasses.dataclass
class BuildConfig:
    out: str = opt("", "output directory for the shards and manifest.json")
    synthetic: int | None = opt(None, "generate N synthetic paintings (the embedded demo data)", min=1)
    synthetic_max_side: int = opt(1500, "longer side of the synthetic originals in pixels", min=16)
    synthetic_artists: int = opt(8, "synthetic artist classes", min=2)
    synthetic_genres: int = opt(6, "synthetic genre classes", min=2)
    synthetic_styles: int = opt(6, "synthetic style classes", min=2)
    images_root: str | None = opt(None, "ArtGAN image tree (the unpacked wikiart/ folder)")
    csv_dir: str | None = opt(None, "folder with the ArtGAN split files (artist_train, genre_val.csv, ...)")
    allow_missing: bool = opt(False, "build from the listed images that exist; missing ones are skipped")
    hf_dataset: str | None = opt(None, "Hugging Face dataset: hub name (huggan/wikiart), a save_to_disk "
                                       "folder, or parquet files")
    hf_split: str = opt("train", "split of the Hugging Face dataset to read")
    keep_unknown: bool = opt(False, "keep 'Unknown Artist' / 'Unknown Genre' as classes (HF)")
    tasks: tuple[str, ...] = opt((), "tasks to keep: artist genre style; empty: all the source has")
    short_side: int = opt(448, "resize the shorter side to this (no upscaling); 0 keeps the originals", min=0)
    max_side: int | None = opt(None, "cap on the longer side; none: 3 x --short-side", min=1)
    jpeg_quality: int = opt(90, "JPEG quality of the re-encoded images", min=1)
    val_frac: float = opt(0.1, "validation fraction for sources without a val split (HF, synthetic)", min=0.0)
    seed: int = opt(0, "seed of the shard shuffle and of the synthetic data")
    shard_size: int = opt(1000, "maximum samples per shard", min=1)
    shard_mb: float = opt(500.0, "maximum shard size in MB (estimated when planning)", min=1.0)
    min_shards: int = opt(8, "at least this many train shards where the sample count allows", min=1)
    min_val_shards: int = opt(4, "at least this many val shards where the sample count allows", min=1)
    workers: int | None = opt(None, "encoding processes; none: all cores, 0: in this process", min=0)
    num_parts: int = opt(1, "build in K disjoint parts, e.g. a SLURM array (shard i -> part i %% K)", min=1)
    part: int = opt(0, "which part to build, 0 .. K-1", min=0)
    merge_manifests: bool = opt(False, "combine the part manifests in --out into manifest.json")
    verify: str | None = opt(None, "check every shard in DIR against its manifest (bare --verify: check --out "
                                   "after building)")
    overwrite: bool = opt(False, "rebuild when --out holds shards of a different build")
    progress: bool = opt(True, "progress bar (off when stderr is not a terminal)")
    push_to_hub: str | None = opt(None, "then upload the finished build (tars, manifest.json, a dataset card) "
                                        "to this Hugging Face dataset repo, USER/NAME; resumable: shards the "
                                        "repo already holds are not sent again")
    hub_private: bool = opt(False, "create that dataset repo private")


def parse_build_config(argv: Sequence[str] | None = None) -> BuildConfig:
    """Parse the builder's command line (a bare `--verify` checks --out after the build)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg == "--verify" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv[i] = f"--verify={VERIFY_OUT}"
    return parse_config({"build": BuildConfig}, argv, "Build WebDataset shards from WikiArt.", prog=PROG)["build"]


def _check_config(cfg: BuildConfig) -> None:
    if not cfg.out:
        raise BuildError("--out: give the output directory")
    if cfg.part >= cfg.num_parts:
        raise BuildError(f"--part: {cfg.part} must be < --num-parts {cfg.num_parts}")
    if cfg.val_frac >= 1.0:
        raise BuildError(f"--val-frac: {cfg.val_frac} must be < 1")
    unknown = [t for t in cfg.tasks if t not in BASE_TASKS]
    if unknown:
        raise BuildError(f"--tasks: unknown task(s) {unknown}; expected some of {list(BASE_TASKS)}")


def resolved_max_side(cfg: BuildConfig) -> int | None:
    return cfg.max_side or (3 * cfg.short_side if cfg.short_side else None)


def build_params(cfg: BuildConfig) -> dict[str, Any]:
    """The parameters that decide the shard contents (recorded in the manifest)."""
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_BUILD_PARAMS}
    params["tasks"] = list(cfg.tasks)
    params["max_side"] = resolved_max_side(cfg)
    irrelevant = []   # options of the sources not used
    if cfg.synthetic is None:
        irrelevant += [k for k in params if k.startswith("synthetic")]
    if not cfg.hf_dataset:
        irrelevant += ["hf_split", "keep_unknown"]
    if cfg.images_root:
        irrelevant.append("val_frac")   # ArtGAN brings its own split
    return {k: v for k, v in params.items() if k not in irrelevant}


# ----------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------
def _estimated_bytes(rec: Record, cfg: BuildConfig) -> float:
    if cfg.short_side:  # JPEG q90 of a ~4:3 painting: about 0.35 bytes per pixel
        return cfg.short_side ** 2 * 1.4 * 0.35
    return rec.size_hint or 1.5e6


def plan_shards(records: Sequence[Record], cfg: BuildConfig, sequential: bool = False) -> list[ShardPlan]:
    """Cut each split into even shards of shuffled records (deterministic given the seed)."""
    counts = collections.Counter(r.key for r in records)
    if len(counts) != len(records):
        raise BuildError(f"duplicate sample keys: {[k for k, n in counts.items() if n > 1][:5]}")
    plans = []
    for split, min_shards in (("train", cfg.min_shards), ("val", cfg.min_val_shards)):
        recs = sorted((r for r in records if r.split == split), key=lambda r: r.key)
        if not recs:
            continue
        random.Random(f"wikiart-shards:{cfg.seed}:{split}").shuffle(recs)
        total_bytes = sum(_estimated_bytes(r, cfg) for r in recs)
        count = max(math.ceil(len(recs) / cfg.shard_size), math.ceil(total_bytes / (cfg.shard_mb * 1e6)),
                    min_shards)
        count = min(count, len(recs))  # a byte estimate above the records' count: no empty shards
        for i in range(count):
            chunk = recs[i * len(recs) // count:(i + 1) * len(recs) // count]
            if sequential:  # a stream is written in source order
                chunk.sort(key=lambda r: r.pos)
            plans.append(ShardPlan(split, i, chunk))
    return plans


def fingerprint(params: dict[str, Any], classes: dict[str, list[str]], kind: str,
                plans: Sequence[ShardPlan]) -> str:
    """Hash of everything that decides the bytes of the shards."""
    digest = hashlib.sha256(json.dumps([params, classes, kind], sort_keys=True).encode())
    for plan in plans:
        digest.update(f"#{plan.name}\n".encode())
        for rec in plan.records:
            digest.update(f"{rec.key}|{rec.source}|{sorted(rec.labels.items())}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------
def build_shards(cfg: BuildConfig, on_shard: Callable[[Any], None] = lambda result: None) -> Manifest | None:
    """Build (this part of) the shards; returns the Manifest, or None for one part of several.

    Source and plan are checked before --out is touched, so bad input writes nothing. `on_shard`
    hears of every shard of this part that is complete on disk: reused ones first, then each
    new one as it is finished (a ShardResult: name, samples, bytes, sha256).
    """
    _check_config(cfg)
    source = open_source(cfg)
    records = source.index()
    if not records:
        raise BuildError("the source has no images to build from")
    plans = plan_shards(records, cfg, source.sequential)
    params = build_params(cfg)
    fp = fingerprint(params, source.classes, source.kind, plans)
    out = Path(cfg.out)
    _prepare_out(out, fp, cfg, {p.name for p in plans})
    mine = [p for p in plans if p.index % cfg.num_parts == cfg.part]
    done = {p.name: r for p in mine if (r := completed_shard(out, p.name, fp)) is not None}
    todo = [p for p in mine if p.name not in done]
    for plan in mine:   # leftovers of a crashed run (other parts' shards are not ours to touch)
        (out / (plan.name + ".tmp")).unlink(missing_ok=True)
    for result in done.values():
        on_shard(result)
    counter = Throughput()
    workers = (os.cpu_count() or 1) if cfg.workers is None else cfg.workers
    encode = EncodeParams(cfg.short_side, resolved_max_side(cfg), cfg.jpeg_quality)
    with worker_pool(workers if todo else 0) as pool, \
            _progress(cfg.progress, sum(len(p.records) for p in todo), counter) as on_result:
        written = write_shards(source, todo, source.classes, out, encode, pool, fp, on_result,
                               in_flight=4 * max(workers, 1), on_shard=on_shard)
    reused = len(done)
    done.update((r.name, r) for r in written)
    results = [done[p.name] for p in mine]
    meta = {"classes": source.classes, "source": source.describe(), "build": {**params, "fingerprint": fp},
            "source_skipped": source.skipped, "moved_to_val": source.moved_to_val}
    _report(out, results, reused, counter, source)
    if cfg.num_parts == 1:
        manifest = assemble_manifest(meta, results)
        manifest.save(out)
        manifest.root = out
        return manifest
    for other in out.glob("manifest-part-*-of-*.json"):  # the same build cut into another number of parts
        if not other.name.endswith(f"-of-{cfg.num_parts:04d}.json"):
            other.unlink(missing_ok=True)
    atomic_write_json(part_manifest_path(out, cfg.part, cfg.num_parts),
                      {"fingerprint": fp, "part": cfg.part, "num_parts": cfg.num_parts, "meta": meta,
                       "shards_expected": [p.name for p in plans],
                       "results": [dataclasses.asdict(r) for r in results]})
    return None


def _prepare_out(out: Path, fp: str, cfg: BuildConfig, planned: set[str]) -> None:
    """Refuse to mix two different builds in one directory unless --overwrite."""
    previous = _previous_fingerprints(out)
    if previous - {fp} and not cfg.overwrite:
        raise BuildError(f"--out {out} holds shards of a different build (other source or parameters); "
                         "pass --overwrite to replace them or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if not previous - {fp}:
        return
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    # Shards that no part of this build writes, and their state records, go: any part may remove
    # them, since no other part writes them either. A planned name is left to its own part.
    for stale in [*out.glob("train-*.tar"), *out.glob("val-*.tar"), *(out / STATE_DIR).glob("*.json")]:
        if stale.name.removesuffix(".json") not in planned:
            stale.unlink(missing_ok=True)
    if cfg.num_parts == 1:  # parts may run at the same time: only a single build clears the rest
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
        for stale in out.glob("manifest-part-*.json"):
            stale.unlink()


def _previous_fingerprints(out: Path) -> set[str]:
    found = set()
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
        found.add(json.loads((out / MANIFEST_NAME).read_text())["build"]["fingerprint"])
    for state in (out / STATE_DIR).glob("*.json"):
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError, KeyError):
            found.add(json.loads(state.read_text())["fingerprint"])
    return found


@contextlib.contextmanager
def _progress(enabled: bool, total: int, counter: Throughput) -> Iterator[Callable[[bool], None]]:
    if not (enabled and sys.stderr.isatty()) or total == 0:
        yield counter
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    class Rate(ProgressColumn):
        def render(self, task):  # noqa: ANN001 - rich's signature
            return f"{task.speed or 0:.1f} img/s"

    columns = (TextColumn("shards"), BarColumn(), MofNCompleteColumn(), Rate(),
               TextColumn("skipped {task.fields[skipped]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("build", total=total, skipped=0)

        def on_result(ok: bool) -> None:
            counter(ok)
            bar.update(task, advance=1, skipped=counter.skipped)
        yield on_result


def _report(out: Path, results: Sequence[ShardResult], reused: int, counter: Throughput, source: Source) -> None:
    per_split = {s: sum(r.num_samples for r in results if r.split == s) for s in SPLITS}
    skipped = sum(len(r.skipped) for r in results) + len(source.skipped)
    print(f"{out}: {len(results)} shards ({per_split['train']} train, {per_split['val']} val samples; "
          f"{reused} reused), {skipped} skipped, {source.moved_to_val} moved to val, "
          f"{counter.rate:.1f} images/s", flush=True)
    for entry in [*source.skipped, *(s for r in results for s in r.skipped)][:5]:
        print(f"  skipped {entry['source']}: {entry['reason']}", flush=True)


def assemble_manifest(meta: dict[str, Any], results: Sequence[ShardResult]) -> Manifest:
    """The manifest from the shard results (one build, or all parts merged: same function)."""
    splits = {s: SplitInfo(class_counts={t: [0] * len(n) for t, n in meta["classes"].items()}) for s in SPLITS}
    ordered = sorted(results, key=lambda r: (SPLITS.index(r.split), r.name))
    for res in ordered:
        info = splits[res.split]
        info.shards.append(ShardInfo(name=res.name, num_samples=res.num_samples, bytes=res.bytes,
                                     sha256=res.sha256))
        for task, counts in res.class_counts.items():
            info.class_counts[task] = [a + b for a, b in zip(info.class_counts[task], counts)]
    skipped = list(meta["source_skipped"]) + [s for r in ordered for s in r.skipped]
    return Manifest(classes=meta["classes"], splits=splits, source=meta["source"], build=meta["build"],
                    skipped=skipped, moved_to_val=meta["moved_to_val"])


def part_manifest_path(out: Path, part: int, num_parts: int) -> Path:
    return out / f"manifest-part-{part:04d}-of-{num_parts:04d}.json"


def merge_manifests(out: str | Path) -> Manifest:
    """Combine the part manifests of `--num-parts K` builds into manifest.json."""
    out = Path(out)
    files = sorted(out.glob("manifest-part-*-of-*.json"))
    if not files:
        raise BuildError(f"--merge-manifests: no part manifests (manifest-part-*-of-*.json) in {out}")
    parts = [json.loads(f.read_text()) for f in files]
    if len({p["fingerprint"] for p in parts}) != 1:
        raise BuildError(f"--merge-manifests: the part manifests in {out} come from different builds")
    if len({p["num_parts"] for p in parts}) != 1:  # each set alone lists every shard: never add them up
        raise BuildError(f"--merge-manifests: {out} holds part manifests of --num-parts "
                         f"{sorted({p['num_parts'] for p in parts})}; remove those of the build you abandoned")
    num_parts = parts[0]["num_parts"]
    missing = sorted(set(range(num_parts)) - {p["part"] for p in parts if p["num_parts"] == num_parts})
    if missing:
        raise BuildError(f"--merge-manifests: parts {missing} of {num_parts} have not finished in {out}")
    results = [ShardResult(**r) for p in parts for r in p["results"]]
    absent = sorted(set(parts[0]["shards_expected"]) - {r.name for r in results})
    if absent:
        raise BuildError(f"--merge-manifests: shards {absent[:5]} are in no part manifest")
    manifest = assemble_manifest(parts[0]["meta"], results)
    manifest.save(out)
    manifest.root = out
    return manifest
