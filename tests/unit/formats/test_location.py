"""Shards read from a URL (wikiart.formats.location): a real HTTP server on 127.0.0.1 in a thread,
with faults injected. The shard cache shared by processes: tests/integration/test_shard_cache.py;
training and evaluation from a URL: tests/integration/test_remote_runs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.shard_server import serve
from wikiart.formats.location import RemoteShardError, open_remote
from wikiart.formats.manifest import ManifestError, load_manifest
from wikiart.formats.shard import ShardSource, iter_shard
from wikiart.prep.write import verify_shards


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("WIKIART_REMOTE_RETRIES", "3")
    monkeypatch.setenv("WIKIART_REMOTE_BACKOFF", "0.01")


def first_shard(shards: Path) -> tuple[str, int, str]:
    shard = load_manifest(shards).split("train").shards[0]
    return shard.name, shard.bytes, shard.sha256


def samples(source) -> list[tuple[str, bytes, bytes]]:
    return [(raw["__key__"], raw["jpg"], raw["json"]) for raw in iter_shard(source)]


def test_a_manifest_and_its_shards_read_from_a_url_equal_the_local_ones(synthetic_shards):
    with serve(synthetic_shards) as (url, faults):
        remote = load_manifest(url)
        assert remote == load_manifest(synthetic_shards) and remote.root == url
        sources = remote.shard_sources("val")
        assert sources[0].location == url + remote.split("val").shards[0].name
        assert [samples(s) for s in sources] == [samples(p) for p in load_manifest(synthetic_shards).shard_paths("val")]
        assert faults.requests[sources[0].location.rsplit("/", 1)[1]] == 1  # each shard streamed once


@pytest.mark.parametrize("ranges", [True, False])
def test_a_connection_cut_mid_shard_resumes_where_it_broke_off(synthetic_shards, ranges):
    name, size, sha = first_shard(synthetic_shards)
    with serve(synthetic_shards) as (url, faults):
        faults.ranges, faults.cut_after[name] = ranges, size // 2
        with open_remote(url + name, size, sha) as stream:
            assert stream.read() == (synthetic_shards / name).read_bytes()
        assert faults.requests[name] == 2 and faults.range_headers == [(name, f"bytes={size // 2}-")]
        # With range support the second answer is the rest only; without, the whole file is sent
        # again and the bytes already read are skipped.
        assert faults.sent[name] == (size if ranges else size // 2 + size)


def test_503_twice_then_success_is_retried(synthetic_shards):
    name, size, sha = first_shard(synthetic_shards)
    with serve(synthetic_shards) as (url, faults):
        faults.unavailable[name] = 2
        assert samples(ShardSource(url + name, size, sha)) == samples(synthetic_shards / name)
        assert faults.requests[name] == 3


def test_retries_end_in_one_line_naming_the_url(synthetic_shards):
    name, size, sha = first_shard(synthetic_shards)
    with serve(synthetic_shards) as (url, faults):
        faults.unavailable[name] = 10
        with pytest.raises(RemoteShardError) as err:
            samples(ShardSource(url + name, size, sha))
        assert str(err.value) == f"{url}{name}: read failed after 3 attempt(s) at byte 0: HTTP 503 Service Unavailable"
        assert faults.requests[name] == 3


def test_a_404_fails_at_once_without_retries(synthetic_shards):
    name, size, sha = first_shard(synthetic_shards)
    with serve(synthetic_shards) as (url, faults):
        faults.missing.add(name)
        with pytest.raises(RemoteShardError, match=f"^{url}{name}: HTTP 404 Not Found$"):
            samples(ShardSource(url + name, size, sha))
        assert faults.requests[name] == 1


def test_a_shard_whose_bytes_differ_from_the_manifest_is_refused_at_its_end(synthetic_shards):
    name, size, sha = first_shard(synthetic_shards)
    data = bytearray((synthetic_shards / name).read_bytes())
    data[-1] ^= 0xFF  # in the tar's zero padding: every sample still reads, only the digest differs
    with serve(synthetic_shards) as (url, faults):
        faults.replaced[name] = bytes(data)
        with pytest.raises(RemoteShardError, match="sha256 differs from the manifest"):
            samples(ShardSource(url + name, size, sha))
        reader = iter_shard(ShardSource(url + name, size, sha))
        next(reader)  # a shard read only in part is not checked (its digest is unknown)
        reader.close()


def test_verify_from_a_url_reports_the_shard_that_differs(synthetic_shards):
    name, _, _ = first_shard(synthetic_shards)
    with serve(synthetic_shards) as (url, faults):
        assert verify_shards(url) == []
        faults.replaced[name] = (synthetic_shards / name).read_bytes()[:-512]
        assert verify_shards(url) == [f"{name}: {url}{name}: {len(faults.replaced[name])} bytes, the manifest "
                                      f"lists {len(faults.replaced[name]) + 512} (the shard was replaced or truncated)"]
        faults.missing.add("manifest.json")
        with pytest.raises(ManifestError, match="cannot read the manifest: .*manifest.json: HTTP 404"):
            load_manifest(url)


def test_hf_urls_go_through_the_hub_client_and_honour_offline_mode(monkeypatch):
    from huggingface_hub import constants

    from wikiart.formats.location import hub_http_url
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    http_url, headers = hub_http_url("hf://datasets/user/wikiart-shards@v1.0/shards/train-000000.tar")
    assert http_url == f"{constants.ENDPOINT}/datasets/user/wikiart-shards/resolve/v1.0/shards/train-000000.tar"
    assert "wikiart" in headers["user-agent"]
    with pytest.raises(RemoteShardError, match="expected hf://datasets/USER/REPO"):
        hub_http_url("hf://datasets/user-only")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RemoteShardError, match="HF_HUB_OFFLINE is set"):
        hub_http_url("hf://datasets/user/wikiart-shards/shards/manifest.json")


def test_a_url_scheme_without_its_fsspec_backend_says_what_to_install():
    with pytest.raises(RemoteShardError, match="s3://bucket/shards/manifest.json: .*pip install s3fs"):
        open_remote("s3://bucket/shards/manifest.json")
