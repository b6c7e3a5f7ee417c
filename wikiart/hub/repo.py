"""A Hub repo as the commands see it, with no training types: the API client (or the test
double), repo id and token checks, and the evaluation card push.

Test hook: `API_FACTORY` (in-process) or `WIKIART_HUB_API=module:Class` (subprocesses) replaces
`HfApi` with a recording double; everything up to the HTTP call is the real code.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

from huggingface_hub import ModelCard, get_token
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import validate_repo_id

from .card import build_card, update_card_gallery, update_card_metrics
from .client import HubError, RetryPolicy, call_with_retries, commit_url, missing_on_hub, say

API_FACTORY: Callable[[], Any] | None = None
API_ENV = "WIKIART_HUB_API"


class HubConfigError(ValueError):
    """A Hub flag is invalid or the token is missing; raised before training starts."""


def make_api() -> Any:
    """`HfApi()`, or the test double named by `API_FACTORY` / `$WIKIART_HUB_API`."""
    if API_FACTORY is not None:
        return API_FACTORY()
    spec = os.environ.get(API_ENV)
    if spec:
        module, _, name = spec.partition(":")
        return getattr(importlib.import_module(module), name)()
    from huggingface_hub import HfApi
    return HfApi(library_name="wikiart")


def check_repo_id(repo_id: str, flag: str = "--push-to-hub") -> None:
    try:
        validate_repo_id(repo_id)
    except hf_errors.HFValidationError as exc:
        raise HubConfigError(f"{flag} {repo_id!r}: not a valid repo id (expected NAME or "
                             f"USER/NAME of letters, digits, '-', '_', '.'): {exc}".splitlines()[0]) from exc


def check_token(flag: str = "--push-to-hub") -> None:
    if get_token() is None:
        raise HubConfigError(f"{flag}: no Hugging Face token; run `hf auth login` or set HF_TOKEN "
                             "to a token with write access")


def _fetch_card(api: Any, repo_id: str, policy: RetryPolicy, tmp: Path) -> tuple[ModelCard | None, bool]:
    """(the repo's card or None, whether the repo exists)."""
    try:
        path, _ = call_with_retries(lambda: api.hf_hub_download(repo_id=repo_id, filename="README.md",
                                                                local_dir=str(tmp)),
                                    policy, f"download of {repo_id}/README.md")
    except HubError as exc:
        if isinstance(exc.cause, hf_errors.RepositoryNotFoundError):
            return None, False
        if missing_on_hub(exc.cause):
            return None, True
        raise
    return ModelCard(Path(path).read_text()), True


def push_eval_card(repo_id: str, metrics: dict[str, Any], *, split: str = "val", step: int | None = None,
                   model_config: dict[str, Any] | None = None, manifest: Any = None, private: bool = False,
                   api: Any = None, policy: RetryPolicy | None = None,
                   gallery: dict[str, bytes] | None = None) -> str:
    """Write `metrics` into the card of `repo_id` (creating card or repo if missing); the commit URL.
    `gallery` (repo path -> PNG bytes, evaluate.py --card-gallery) goes up in the same commit and
    the card shows it.

    Synchronous, retried; raises HubConfigError (bad id, no token) or HubError (Hub failed).
    `model_config` (the model's config.json) and `manifest` describe a card built from scratch.
    """
    import tempfile
    check_repo_id(repo_id)
    check_token()
    api = api if api is not None else make_api()
    policy = policy or RetryPolicy()
    with tempfile.TemporaryDirectory() as tmp:
        card, exists = _fetch_card(api, repo_id, policy, Path(tmp))
    if card is None:
        card = build_card(repo_id, model_config or {}, manifest=manifest, metrics=metrics, split=split, step=step)
    else:
        card = update_card_metrics(card, metrics, split, step)
    if gallery:
        card = update_card_gallery(card, sorted(gallery), split)
    message = f"wikiart: evaluation metrics ({split} split)" + (", gallery" if gallery else "")

    def upload() -> Any:
        if not exists:
            api.create_repo(repo_id, private=private, exist_ok=True)
        if not gallery:
            return api.upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id=repo_id,
                                   commit_message=message)
        with tempfile.TemporaryDirectory() as folder:  # one commit: the card never names missing files
            for name, data in {"README.md": str(card).encode(), **gallery}.items():
                (Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(folder) / name).write_bytes(data)
            return api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=message)
    info, _ = call_with_retries(upload, policy, f"card update of {repo_id}")
    url = commit_url(info)
    say(f"hub: updated the card of {repo_id}: {url}")
    return url
