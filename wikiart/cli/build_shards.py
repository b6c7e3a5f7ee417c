"""`wikiart-build-shards`: records -> resized JPEGs -> WebDataset tars + manifest.json
(wikiart.prep.build.build_shards).

    wikiart-build-shards --out DIR (--synthetic N | --images-root DIR --csv-dir DIR |
                                    --hf-dataset NAME_OR_PATH) [--short-side 448] [--verify] ...
    python -m wikiart.cli.build_shards --out DIR --num-parts K --part I ...   # one part of K
    python -m wikiart.cli.build_shards --out DIR --merge-manifests --verify   # after the K parts
    python -m wikiart.cli.build_shards --verify DIR                           # check shards only

Exit codes: 0 built (and verified), 1 --verify found problems, 2 bad command line or input
(one line naming it; nothing written).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ..formats.manifest import MANIFEST_NAME, ManifestError
from ..prep.build import PROG, VERIFY_OUT, BuildConfig, BuildError, build_shards, merge_manifests, parse_build_config
from ..prep.sources import SourceError
from ..prep.write import verify_shards


def build(cfg: BuildConfig) -> None:
    """What the flags ask for before any verification: merge the parts, build, or nothing."""
    if cfg.merge_manifests:
        merge_manifests(cfg.out or ".")
        print(f"merged the part manifests into {Path(cfg.out or '.') / MANIFEST_NAME}")
    elif cfg.verify and cfg.verify != VERIFY_OUT and not cfg.out:
        pass  # verify only
    else:
        build_shards(cfg)


def verify(cfg: BuildConfig) -> int:
    """--verify: every problem on stderr, a one-line verdict; 1 if any shard is wrong."""
    target = cfg.out if cfg.verify == VERIFY_OUT else cfg.verify
    problems = verify_shards(target)
    for problem in problems:
        print(f"{PROG}: verify: {problem}", file=sys.stderr)
    print(f"verify {target}: {'OK' if not problems else f'{len(problems)} problem(s)'}", flush=True)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (`wikiart-build-shards`, `python -m wikiart.cli.build_shards`)."""
    cfg = parse_build_config(argv)
    try:
        build(cfg)
    except (SourceError, BuildError, ManifestError, RuntimeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return verify(cfg) if cfg.verify else 0


if __name__ == "__main__":
    sys.exit(main())
