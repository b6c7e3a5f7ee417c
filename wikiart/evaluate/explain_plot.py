"""Pictures of where the model looked (wikiart.model.explain): the painting as the model saw it
(the centre crop), the attention map and each head's Grad-CAM overlaid, captioned with the top
classes per head. Drawn with Pillow (matplotlib only lends its colour map); PNG bytes are
returned, so callers write them atomically (formats.files.write_bytes).
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..model.explain import Explanation

PANEL = 224            # one panel of a per-image picture, in pixels
ALPHA = 0.5            # weight of the heat map over the painting
NO_ATTENTION = "no attention: --no-rnn model (GAP), see Grad-CAM"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def heat_overlay(crop: np.ndarray, grid: np.ndarray, size: int = PANEL) -> Image.Image:
    """The crop (S, S, 3) uint8 with `grid` (H, W), scaled to its maximum, blended over it in colour."""
    from matplotlib import colormaps

    base = Image.fromarray(np.ascontiguousarray(crop)).convert("RGB").resize((size, size), Image.BILINEAR)
    grid = np.asarray(grid, dtype=np.float32)
    top = float(grid.max()) if grid.size else 0.0
    scaled = grid / top if top > 0 else np.zeros_like(grid)
    heat = np.asarray(Image.fromarray(scaled, mode="F").resize((size, size), Image.BILINEAR)).clip(0.0, 1.0)
    colour = Image.fromarray((colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8))
    return Image.blend(base, colour, ALPHA)


def placeholder(text: str, size: int = PANEL) -> Image.Image:
    """A grey panel saying why there is no map."""
    panel = Image.new("RGB", (size, size), (225, 225, 225))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=max(8, size // 19))
    words, lines = text.split(), [""]
    for word in words:  # wrap to the panel's width
        trial = f"{lines[-1]} {word}".strip()
        lines[-1:] = [trial] if draw.textlength(trial, font=font) <= size - 12 else [lines[-1], word]
    for j, line in enumerate(lines):
        draw.text((6, size // 2 - 8 * len(lines) + j * (size // 12)), line, fill="black", font=font)
    return panel


def panels(crop: np.ndarray, expl: Explanation, i: int, tasks: Sequence[str],
           size: int = PANEL) -> list[tuple[str, Image.Image]]:
    """(label, image) panels of image `i`: the painting, the attention map, Grad-CAM of each of `tasks`."""
    painting = Image.fromarray(np.ascontiguousarray(crop)).convert("RGB").resize((size, size), Image.BILINEAR)
    attention = (heat_overlay(crop, expl.attention[i].numpy(), size) if expl.attention is not None
                 else placeholder(NO_ATTENTION, size))
    grid = "x".join(str(n) for n in expl.gradcam[next(iter(expl.gradcam))].shape[1:])  # the map's cells
    out = [("painting (model's crop)", painting), (f"attention ({grid} grid, all heads)", attention)]
    return out + [(f"Grad-CAM {t}", heat_overlay(crop, expl.gradcam[t][i].numpy(), size)) for t in tasks]


def strip(crop: np.ndarray, expl: Explanation, i: int, tasks: Sequence[str], size: int) -> Image.Image:
    """The panels of image `i` side by side, unlabelled (a contact sheet's cell)."""
    images = [image for _, image in panels(crop, expl, i, tasks, size)]
    out = Image.new("RGB", (size * len(images), size), "white")
    for j, image in enumerate(images):
        out.paste(image, (j * size, 0))
    return out


def top_classes(expl: Explanation, i: int, class_names: Mapping[str, Sequence[str]],
                k: int = 3) -> dict[str, list[tuple[str, float]]]:
    """Per head of image `i`: the k most probable classes with their probabilities."""
    out = {}
    for task, logits in expl.logits.items():
        probs = logits[i].softmax(dim=0)
        values, indices = probs.topk(min(k, len(probs)))
        out[task] = [(class_names[task][int(j)], float(p)) for p, j in zip(values, indices)]
    return out


def render_explanation(crop: np.ndarray, expl: Explanation, i: int, class_names: Mapping[str, Sequence[str]],
                       title: str, k: int = 3) -> bytes:
    """One image's picture as PNG bytes: title, labelled panels, then the top-k classes per head."""
    tasks = list(expl.logits)
    labelled = panels(crop, expl, i, tasks)
    captions = [f"{task}: " + ", ".join(f"{name} {p:.2f}" for name, p in ranked)
                for task, ranked in top_classes(expl, i, class_names, k).items()]
    font, head = ImageFont.load_default(size=13), ImageFont.load_default(size=15)
    width = max(PANEL * len(labelled), 480)
    canvas = Image.new("RGB", (width, 52 + PANEL + 10 + 18 * len(captions)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill="black", font=head)
    for j, (label, image) in enumerate(labelled):
        draw.text((j * PANEL + 6, 30), label, fill="black", font=font)
        canvas.paste(image, (j * PANEL, 50))
    for j, caption in enumerate(captions):
        draw.text((8, 50 + PANEL + 6 + 18 * j), caption, fill="black", font=font)
    return png_bytes(canvas)
