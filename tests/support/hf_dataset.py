"""A small Hugging Face dataset as the WikiArt one is laid out (an image column and ClassLabel
columns artist, genre, style with the "Unknown ..." classes), for the source and builder tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

HF_ARTISTS = ["Unknown Artist", "claude-monet", "rembrandt"]
HF_GENRES = ["landscape", "portrait", "Unknown Genre"]
HF_STYLES = ["Baroque", "Impressionism"]


def hf_dataset(n: int = 40):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "artist": datasets.ClassLabel(names=HF_ARTISTS),
                                  "genre": datasets.ClassLabel(names=HF_GENRES),
                                  "style": datasets.ClassLabel(names=HF_STYLES)})
    rows = {"image": [], "artist": [], "genre": [], "style": []}
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 30, 3), i * 6, np.uint8)).save(buf, "JPEG")
        rows["image"].append({"bytes": buf.getvalue(), "path": None})
        rows["artist"].append(i % 3)
        rows["genre"].append(i % 3)
        rows["style"].append(int(i % 4 == 0))
    return datasets.Dataset.from_dict(rows, features=features)
