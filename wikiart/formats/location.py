"""Where shards live: a local directory, or the URL of the folder that holds manifest.json and
the tars (`https://host/wikiart/`, `hf://datasets/USER/REPO[@REVISION]/PATH`, or any fsspec URL
such as `s3://bucket/wikiart` whose package the user has installed).

Local paths keep the in-place tar reader (`formats.shard`). A remote shard is streamed once, front
to back, with bounded memory (a read-ahead buffer, `READ_AHEAD`); each loader worker streams its
own shard, which is what keeps the GPU fed. HTTP reads survive a dropped connection or a 5xx:
they retry with exponential backoff and resume at the byte offset (a `Range` request; a server
without range support is read again from the start and the bytes already delivered skipped),
and after the retries fail with one line naming the URL. A shard read to its end is checked
against the manifest's size and sha256 (`RemoteShardError` names the URL when they differ).

`hf://` URLs go through huggingface_hub's own URL builder and headers (token, `HF_ENDPOINT`,
`HF_HUB_OFFLINE`) and then through the same retrying HTTP reader. Other schemes go to
`fsspec.open`, whose backend (s3fs, gcsfs) the user installs; it does its own retries.

Retries: `WIKIART_REMOTE_RETRIES` attempts (default 6) with delays of `WIKIART_REMOTE_BACKOFF`
seconds doubling up to 60 (default 1: 1, 2, 4, 8, 16 s).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from ..runtime.errors import UserError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
READ_AHEAD = 4 << 20            # bytes buffered ahead of the tar reader per open shard
TIMEOUT_S = 60                  # a stalled connection counts as dropped after this long
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "wikiart-shard-reader"


class RemoteShardError(UserError):
    """A remote shard or manifest could not be read after the retries, or differs from the
    manifest; the message names the URL."""


def is_remote(location: str | Path) -> bool:
    """A URL other than file:// (which is a local path)."""
    text = str(location)
    return bool(_URL.match(text)) and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def child(location: str | Path, name: str) -> str:
    """`name` inside the folder `location` (a directory or a URL of one)."""
    if is_remote(location):
        return str(location).rstrip("/") + "/" + urllib.parse.quote(name)
    return str(local_path(location) / name)


def exists_locally(location: str | Path) -> bool:
    return not is_remote(location) and local_path(location).is_file()


def open_remote(url: str, size: int | None = None, sha256: str | None = None) -> BinaryIO:
    """A buffered binary stream of a remote file. With the manifest's `size` and `sha256`, reading
    it to the end checks both (the integrity check of a whole shard)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        raw: io.RawIOBase = HttpReader(url)
    elif scheme == "hf":
        raw = HttpReader(*hub_http_url(url), shown=url)
    else:
        raw = _FileReader(_fsspec_open(url), url)
    if size is not None or sha256 is not None:
        raw = CheckedReader(raw, url, size, sha256)
    return io.BufferedReader(raw, buffer_size=READ_AHEAD)


def read_bytes(location: str | Path) -> bytes:
    """The whole file (a manifest) from a local path or a URL."""
    if not is_remote(location):
        return local_path(location).read_bytes()
    with open_remote(str(location)) as stream:
        return stream.read()


# ---------------------------------------------------------------------------------------------
# HTTP(S), with retries and resume at the byte offset
# ---------------------------------------------------------------------------------------------
def retry_policy() -> tuple[int, float]:
    attempts = int(os.environ.get("WIKIART_REMOTE_RETRIES", "6"))
    return max(1, attempts), float(os.environ.get("WIKIART_REMOTE_BACKOFF", "1"))


class HttpReader(io.RawIOBase):
    """A sequential reader of one URL that reconnects where it broke off."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, shown: str | None = None):
        super().__init__()
        self.url, self.shown = url, shown or url
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self.pos, self.size = 0, None
        self.response: http.client.HTTPResponse | None = None
        self.failures = 0
        self.attempts, self.backoff = retry_policy()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            try:
                if self.response is None:
                    self._connect()
                n = self.response.readinto(buffer)
                if n == 0 and len(buffer) and self.size is not None and self.pos < self.size:
                    raise http.client.IncompleteRead(b"", self.size - self.pos)  # cut mid-file
                self.pos += n
                return n
            except RemoteShardError:
                self._drop()
                raise
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                self.failures += 1
                if self.failures >= self.attempts:
                    raise RemoteShardError(f"{self.shown}: read failed after {self.failures} attempt(s) at "
                                           f"byte {self.pos}: {_describe(exc)}") from exc
                time.sleep(min(self.backoff * 2 ** (self.failures - 1), 60.0))

    def _connect(self) -> None:
        headers = dict(self.headers)
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 - user's URL
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRYABLE_STATUS:  # 404, 401, 403: waiting will not help
                raise RemoteShardError(f"{self.shown}: HTTP {exc.code} {exc.reason}") from exc
            raise
        if self.pos and response.status != 206:  # no range support: read again, skip what we have
            _skip(response, self.pos)
        if self.size is None:
            self.size = _total_size(response, self.pos)
        self.response = response

    def _drop(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None

    def close(self) -> None:
        self._drop()
        super().close()


def _total_size(response: http.client.HTTPResponse, pos: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) + (pos if response.status == 206 else 0) if length and length.isdigit() else None


def _skip(response: http.client.HTTPResponse, count: int) -> None:
    while count > 0:
        block = response.read(min(count, 1 << 20))
        if not block:
            raise http.client.IncompleteRead(b"", count)
        count -= len(block)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed mid-file"
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"


# ---------------------------------------------------------------------------------------------
# The Hugging Face Hub and other fsspec file systems
# ---------------------------------------------------------------------------------------------
_HF = re.compile(r"^hf://(?P<kind>datasets|models|spaces)/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?"
                 r"(?:/(?P<path>.*))?$")


def hub_http_url(url: str) -> tuple[str, dict[str, str]]:
    """The resolve URL and request headers (token) of an `hf://` file, from huggingface_hub."""
    match = _HF.match(url)
    if not match or not match.group("path"):
        raise RemoteShardError(f"{url}: expected hf://datasets/USER/REPO[@REVISION]/PATH")
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    if constants.HF_HUB_OFFLINE:
        raise RemoteShardError(f"{url}: HF_HUB_OFFLINE is set; unset it to read shards from the Hub, or "
                               f"download the folder and pass its local path")
    repo_type = {"datasets": "dataset", "models": "model", "spaces": "space"}[match.group("kind")]
    revision = urllib.parse.unquote(match.group("rev")) if match.group("rev") else None
    http_url = hf_hub_url(match.group("repo"), urllib.parse.unquote(match.group("path")),
                          repo_type=repo_type, revision=revision)
    return http_url, build_hf_headers(library_name="wikiart")


def _fsspec_open(url: str):
    try:
        import fsspec
        return fsspec.open(url, "rb").open()
    except ImportError as exc:  # fsspec present, the scheme's backend (s3fs, gcsfs, ...) not
        raise RemoteShardError(f"{url}: no file system for this URL is installed ({exc}); install the "
                               f"fsspec backend of its scheme (e.g. pip install s3fs for s3://)") from exc
    except (ValueError, OSError) as exc:
        raise RemoteShardError(f"{url}: {exc}") from exc


class _FileReader(io.RawIOBase):
    """An fsspec file object as a raw stream whose errors name the URL."""

    def __init__(self, handle, url: str):
        super().__init__()
        self.handle, self.url = handle, url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.handle.read(len(buffer))
        except OSError as exc:
            raise RemoteShardError(f"{self.url}: read failed: {exc}") from exc
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.handle.close()
        super().close()


class CheckedReader(io.RawIOBase):
    """Pass-through that checks the size and sha256 of what was read once the end is reached."""

    def __init__(self, raw: io.RawIOBase, url: str, size: int | None, sha256: str | None):
        super().__init__()
        self.raw, self.url, self.size, self.sha256 = raw, url, size, sha256
        self.digest, self.count, self.checked = hashlib.sha256(), 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.count += n
        elif len(buffer) and not self.checked:
            self.checked = True
            self._check()
        return n

    def _check(self) -> None:
        if self.size is not None and self.count != self.size:
            raise RemoteShardError(f"{self.url}: {self.count} bytes, the manifest lists {self.size} (the "
                                   f"shard was replaced or truncated)")
        if self.sha256 is not None and self.digest.hexdigest() != self.sha256:
            raise RemoteShardError(f"{self.url}: sha256 differs from the manifest (the shard was replaced "
                                   f"or corrupted)")

    def close(self) -> None:
        self.raw.close()
        super().close()
