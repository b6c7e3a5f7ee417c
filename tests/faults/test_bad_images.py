"""A zoo of awkward and broken images: converted to RGB, oriented, reduced, or skipped by name."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wikiart.formats.images import ImageDecodeError, decode_image, decode_rgb
from wikiart.prep.build import build_shards, parse_build_config
from wikiart.formats.shard import iter_shard_samples

RED, BLUE = (255, 0, 0), (0, 0, 255)


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def halves(size: tuple[int, int] = (60, 40), left=RED, right=BLUE) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, w // 2, h))
    return img


def exif_rotated() -> bytes:
    """Stored 60x40 with red left half; EXIF orientation 6 = rotate 90 degrees clockwise to display."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(halves(), exif=exif.tobytes())


def palette_alpha() -> bytes:
    img = Image.new("P", (40, 30), 0)
    img.putpalette([0, 255, 0] + list(BLUE) + [0] * 762)
    img.paste(1, (0, 0, 20, 30))   # left half blue, right half index 0 = transparent
    return png_bytes(img, transparency=0)


def zoo() -> dict[str, bytes]:
    noise = np.random.default_rng(0).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    good = jpeg_bytes(Image.fromarray(noise))   # big enough that half the file is scan data
    return {
        "ok/cmyk.jpg": jpeg_bytes(Image.new("CMYK", (40, 30), (0, 255, 255, 0))),
        "ok/gray16.png": png_bytes(Image.fromarray(np.full((30, 40), 32768, np.uint16))),
        "ok/palette_alpha.png": palette_alpha(),
        "ok/exif_rotated.jpg": exif_rotated(),
        "ok/grayscale.jpg": jpeg_bytes(Image.new("L", (40, 30), 90)),
        "ok/rgba.png": png_bytes(Image.new("RGBA", (40, 30), (255, 0, 0, 0))),
        "ok/huge.jpg": jpeg_bytes(Image.new("L", (12000, 9000), 200)),
        "bad/truncated.jpg": good[: len(good) // 2],
        "bad/empty.jpg": b"",
        "bad/page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
    }


@pytest.fixture(scope="module")
def zoo_build(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("zoo")
    images, csvs = root / "images", root / "csv"
    csvs.mkdir()
    for rel, data in zoo().items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)
    (csvs / "genre_train.csv").write_text("".join(f"{rel},{i % 10}\n" for i, rel in enumerate(zoo())))
    out = root / "shards"
    cfg = parse_build_config(["--out", str(out), "--images-root", str(images), "--csv-dir", str(csvs),
                              "--short-side", "32", "--workers", "2", "--no-progress"])
    manifest = build_shards(cfg)
    samples = {meta["source"]: (Image.open(io.BytesIO(jpg)), meta)
               for _, jpg, meta in iter_shard_samples(manifest.shard_paths("train"))}
    return out, {"manifest": manifest, "samples": samples}


@pytest.mark.faults
def test_zoo_skips_exactly_the_broken_files_with_reasons(zoo_build):
    _, built = zoo_build
    manifest, samples = built["manifest"], built["samples"]
    skipped = {s["source"]: s["reason"] for s in manifest.skipped}
    assert set(skipped) == {"bad/truncated.jpg", "bad/empty.jpg", "bad/page.jpg"}
    assert "truncated" in skipped["bad/truncated.jpg"]
    assert "empty" in skipped["bad/empty.jpg"]
    assert "not an image" in skipped["bad/page.jpg"]
    assert set(samples) == {rel for rel in zoo() if rel.startswith("ok/")}
    assert manifest.num_samples("train") == 7
    assert all(img.mode == "RGB" for img, _ in samples.values())


def test_zoo_conversions_keep_the_colours(zoo_build):
    samples = zoo_build[1]["samples"]
    cmyk = np.asarray(samples["ok/cmyk.jpg"][0]).mean(axis=(0, 1))
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60          # CMYK (0,255,255,0) is red
    gray16 = np.asarray(samples["ok/gray16.png"][0]).mean()
    assert 115 < gray16 < 140                                          # half of 16-bit range, not clipped white
    pal = np.asarray(samples["ok/palette_alpha.png"][0]).astype(int)
    assert pal[:, :10].mean(axis=(0, 1)) == pytest.approx(BLUE, abs=40)   # opaque blue
    assert pal[:, -10:].mean() > 230                                   # transparent -> white
    assert np.asarray(samples["ok/rgba.png"][0]).mean() > 230          # fully transparent red -> white


def test_exif_orientation_is_applied(zoo_build):
    img, meta = zoo_build[1]["samples"]["ok/exif_rotated.jpg"]
    assert meta["orig_size"] == [40, 60]
    assert img.width < img.height                                      # displayed portrait
    pixels = np.asarray(img).astype(int)
    top, bottom = pixels[: img.height // 3].mean(axis=(0, 1)), pixels[-img.height // 3:].mean(axis=(0, 1))
    assert top[0] > 180 and top[2] < 80                                # red left half is now on top
    assert bottom[2] > 180 and bottom[0] < 80


def test_huge_jpeg_is_reduced_not_refused(zoo_build):
    img, meta = zoo_build[1]["samples"]["ok/huge.jpg"]
    assert meta["orig_size"] == [12000, 9000]
    assert min(img.size) == 32 and img.size == (43, 32)


def test_draft_decodes_huge_jpeg_at_reduced_size():
    data = jpeg_bytes(Image.new("L", (12000, 9000), 50))
    decoded = decode_image(data, min_side=448)
    assert decoded.orig_size == (12000, 9000)
    assert decoded.image.size == (1500, 1125)                          # 1/8 scale, short side still >= 448
    assert decoded.image.mode == "RGB"


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_oversized_non_jpeg_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_rgb(_png_header_only(30000, 20000))   # 600 MP PNG: no draft for PNG


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"GIF89a garbage", "not an image|corrupt|unreadable"),
                                          (b"\xff\xd8\xff\xe0" + b"\0" * 20, "not an image|corrupt|unreadable")])
def test_decode_errors_are_image_decode_errors(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_rgb(data)


def test_decode_rgb_accepts_paths_and_bytes(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(palette_alpha())
    assert np.array_equal(np.asarray(decode_rgb(path)), np.asarray(decode_rgb(path.read_bytes())))
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_rgb(tmp_path / "missing.jpg")


def test_sample_json_records_source_and_sizes(zoo_build):
    out, built = zoo_build
    _, meta = built["samples"]["ok/grayscale.jpg"]
    assert meta["labels"] == {"genre": 4} and meta["source"] == "ok/grayscale.jpg"
    assert meta["orig_size"] == [40, 30] and meta["size"] == [40, 30]   # never upscaled
    assert json.loads((out / "manifest.json").read_text())["skipped"][0]["key"]
