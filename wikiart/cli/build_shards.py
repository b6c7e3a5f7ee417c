"""`wikiart-build-shards`: records -> resized JPEGs -> WebDataset tars + manifest.json
(wikiart.prep.build.build_shards).

    wikiart-build-shards --out DIR (--synthetic N | --images-root DIR --csv-dir DIR |
                                    --hf-dataset NAME_OR_PATH) [--short-side 448] [--verify] ...
    python -m wikiart.cli.build_shards --out DIR --num-parts K --part I ...   # one part of K
    python -m wikiart.cli.build_shards --out DIR --merge-manifests --verify   # after the K parts
    python -m wikiart.cli.build_shards --verify DIR                           # check shards only
    wikiart-build-shards --out DIR ... --verify --push-to-hub USER/NAME       # then upload as a dataset repo

Exit codes: 0 built (and verified, and pushed), 1 --verify found problems or the push failed
after its retries, 2 bad command line or input (one line naming it; nothing written).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ..formats.location import is_remote
from ..formats.manifest import MANIFEST_NAME, ManifestError
from ..prep.build import PROG, VERIFY_OUT, BuildConfig, BuildError, build_shards, merge_manifests, parse_build_config
from ..prep.sources import SourceError
from ..prep.write import verify_shards


def builds_shards(cfg: BuildConfig) -> bool:
    """Whether the flags ask for a build (not a merge of the parts' manifests, nor a verify only)."""
    return not cfg.merge_manifests and not (cfg.verify and cfg.verify != VERIFY_OUT and not cfg.out)


def build(cfg: BuildConfig, uploader=None) -> None:
    """What the flags ask for before any verification: merge the parts, build, or nothing; with
    --push-to-hub, `uploader` (hub.dataset.ShardUploader) sends shards while the build goes on."""
    if cfg.merge_manifests:
        merge_manifests(cfg.out or ".")
        print(f"merged the part manifests into {Path(cfg.out or '.') / MANIFEST_NAME}")
    elif not builds_shards(cfg):
        pass  # verify only
    elif uploader is not None:
        try:
            build_shards(cfg, on_shard=uploader.add)
        finally:
            uploader.close()  # a failed build stops the background uploads too
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


def push(cfg: BuildConfig, uploader=None) -> int:
    """--push-to-hub: the finished build in --out (or the --verify DIR) as a dataset repo; what the
    background `uploader` already sent during the build is not sent again."""
    from ..hub.client import HubError
    from ..hub.dataset import push_shards
    try:
        if uploader is not None:
            uploader.finish()
        else:
            push_shards(cfg.out or cfg.verify, cfg.push_to_hub, private=cfg.hub_private)
    except HubError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def check_push(cfg: BuildConfig) -> None:
    """A bad repo id, a missing token or a remote folder fail before anything is built."""
    from ..hub.repo import check_repo_id, check_token
    if cfg.push_to_hub is None:
        return
    target = cfg.out or (cfg.verify if cfg.verify != VERIFY_OUT else None)
    if not target or is_remote(target):
        raise BuildError("--push-to-hub uploads a local build: give its directory as --out (or --verify DIR)")
    if cfg.num_parts > 1 and not cfg.merge_manifests:
        raise BuildError("--push-to-hub with --num-parts: push once, with --merge-manifests after every part is built")
    check_repo_id(cfg.push_to_hub)
    check_token()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (`wikiart-build-shards`, `python -m wikiart.cli.build_shards`)."""
    cfg = parse_build_config(argv)
    uploader = None
    try:
        check_push(cfg)
        uploader = background_uploader(cfg)
        build(cfg, uploader)
    except (SourceError, BuildError, ManifestError, ValueError, RuntimeError) as exc:  # HubConfigError: ValueError
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    status = verify(cfg) if cfg.verify else 0
    return push(cfg, uploader) if status == 0 and cfg.push_to_hub else status


def background_uploader(cfg: BuildConfig):
    """A ShardUploader when this command builds shards and pushes them (None otherwise)."""
    if cfg.push_to_hub is None or not builds_shards(cfg):
        return None
    from ..hub.dataset import ShardUploader
    return ShardUploader(cfg.out, cfg.push_to_hub, private=cfg.hub_private)


if __name__ == "__main__":
    sys.exit(main())
