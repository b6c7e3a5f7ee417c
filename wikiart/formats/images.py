"""Image decoding and normalisation shared by the shard builder and the training loader.

`decode_rgb` turns whatever a source holds (file bytes or a path) into an RGB PIL image:
EXIF orientation applied; CMYK, grayscale, palette, 16-bit and alpha images converted to
RGB; huge JPEGs decoded at reduced size through `draft`. Anything that is not a readable
image raises `ImageDecodeError` with a short reason, never a crash deeper in the pipeline.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike]

# WikiArt holds scans of hundreds of megapixels. Pillow refuses anything above
# 2 * MAX_IMAGE_PIXELS as a decompression bomb; we raise the bound deliberately and check
# sizes ourselves below, because JPEGs are decoded through `draft` at 1/2..1/8 scale.
MAX_JPEG_PIXELS = 2_000_000_000      # decoded at reduced size, so this stays cheap
MAX_OTHER_PIXELS = 250_000_000       # PNG/TIFF/... decode at full size: ~750 MB of RGB at the bound
Image.MAX_IMAGE_PIXELS = MAX_JPEG_PIXELS // 2
ImageFile.LOAD_TRUNCATED_IMAGES = False   # a truncated file is skipped, not half-grey


class ImageDecodeError(ValueError):
    """The input is not a decodable image; the message is a short reason for the manifest."""


@dataclasses.dataclass
class Decoded:
    image: Image.Image          # RGB, orientation applied, possibly reduced by draft
    orig_size: tuple[int, int]  # (w, h) of the original as displayed (after EXIF rotation)
    format: str | None          # "JPEG", "PNG", ...
    plain_jpeg: bool            # RGB JPEG without rotation: its bytes can be kept as they are


def decode_rgb(src: ImageSource, min_side: int | None = None) -> Image.Image:
    """Decode bytes or a path into an RGB image.

    `min_side` is a draft target: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as
    its shorter side stays >= `min_side` (None decodes at full size). Raises ImageDecodeError.
    """
    return decode_image(src, min_side=min_side).image


JPEG_END = b"\xff\xd9"      # end-of-image marker
JPEG_END_WINDOW = 64        # the loader wants the marker this close to the end (else: truncated)


def jpeg_without_trailer(data: bytes) -> bytes | None:
    """A JPEG's bytes up to its last end-of-image marker, None if it has none. What follows the
    marker (padding, a camera's extra data) is not image data: decoders ignore it, but the
    loader's truncation check (`data.stream.check_image_bytes`) looks only at the last bytes."""
    end = data.rfind(JPEG_END)
    return data[:end + len(JPEG_END)] if end >= 0 else None


def decode_image(src: ImageSource, min_side: int | None = None) -> Decoded:
    """Like `decode_rgb` but also returns the original size and format."""
    img = _open(src)
    try:
        decoded = _decode_opened(img, min_side)
    except BaseException:
        img.close()
        raise
    if decoded.image is not img:
        img.close()   # release the file early; a returned RGB original stays open (already loaded)
    return decoded


def _open(src: ImageSource) -> Image.Image:
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        fp: io.BytesIO | str = io.BytesIO(bytes(src))
    else:
        path = Path(src)
        if not path.is_file():
            raise ImageDecodeError(f"file not found: {path}")
        if path.stat().st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        fp = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"unreadable header: {exc}") from None


def _decode_opened(img: Image.Image, min_side: int | None) -> Decoded:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"invalid size {w}x{h}")
    fmt = img.format
    limit = MAX_JPEG_PIXELS if fmt == "JPEG" else MAX_OTHER_PIXELS
    if w * h > limit:
        raise ImageDecodeError(f"too large: {w}x{h} = {w * h / 1e6:.0f} MP (limit {limit / 1e6:.0f} MP for {fmt})")
    orientation = _orientation(img)
    if fmt == "JPEG" and min_side and min(w, h) > min_side:
        scale = min_side / min(w, h)
        img.draft(img.mode if img.mode in ("RGB", "L") else None, (math.ceil(w * scale), math.ceil(h * scale)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"corrupt or truncated: {exc}") from None
    plain = fmt == "JPEG" and img.mode == "RGB" and orientation in (0, 1)
    out = _apply_orientation(img, orientation)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return Decoded(image=to_rgb(out), orig_size=(w, h), format=fmt, plain_jpeg=plain)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # malformed EXIF must not cost us the image
        return 1


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    if orientation in (0, 1):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(img)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"cannot convert mode {mode} to RGB: {exc}") from None


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow's own I;16 -> RGB conversion clips at 255, turning most pixels white.
    arr = np.asarray(img).astype(np.float32)
    if img.mode == "F":
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0.0) > 255 else 255.0
    arr = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return Image.fromarray(arr[:, :, :3], "RGB")


def target_size(size: tuple[int, int], short_side: int, max_side: int | None) -> tuple[int, int]:
    """Size after resizing the shorter side to `short_side` (never upscaling), long side capped."""
    w, h = size
    scale = 1.0
    if short_side > 0 and min(w, h) > short_side:
        scale = short_side / min(w, h)
    if max_side and max(w, h) * scale > max_side:
        scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_short_side(img: Image.Image, short_side: int, max_side: int | None = None) -> Image.Image:
    """Resize so the shorter side is `short_side` (aspect kept, no upscaling, long side capped)."""
    size = target_size(img.size, short_side, max_side)
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """RGB image -> baseline JPEG bytes (deterministic for the same pixels and quality)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
