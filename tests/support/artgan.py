"""A small ArtGAN download in the real, quirky format: 10 images, the six task/split files as the
download has them (no extension and ",," for artist, a repeated row in genre_val.csv)."""

from __future__ import annotations

from pathlib import Path

ARTGAN_IMAGES = {  # letter -> relative path
    "A": "Impressionism/claude-monet_water-lilies.jpg",
    "B": "Impressionism/claude-monet_haystacks.jpg",
    "C": "Post_Impressionism/vincent-van-gogh_ears-of-wheat-1890(1).jpg",
    "D": "Realism/ivan-shishkin_forest.jpg",
    "E": "Baroque/rembrandt_night-watch.jpg",
    "F": "Cubism/pablo-picasso_guitar,-glass.jpg",
    "G": "Realism/ivan-shishkin_rye.jpg",
    "H": "Impressionism/claude-monet_poplars.jpg",
    "I": "Baroque/rembrandt_self-portrait.jpg",
    "J": "Post_Impressionism/vincent-van-gogh_irises.jpg",
}
# (task, split) -> [(letter, label)]; labels index the built-in ArtGAN lists.
ARTGAN_ROWS = {
    ("artist", "train"): [("A", 4), ("C", 22), ("D", 10), ("F", 15), ("I", 20), ("J", 22)],
    ("artist", "val"): [("B", 4), ("E", 20)],
    ("genre", "train"): [("A", 4), ("B", 4), ("D", 4), ("F", 9), ("G", 4), ("I", 6), ("J", 9)],
    ("genre", "val"): [("C", 4), ("E", 6), ("C", 4)],   # the real genre_val.csv repeats one path
    ("style", "train"): [("A", 12), ("B", 12), ("C", 20), ("F", 7), ("G", 21), ("I", 4), ("J", 20)],
    ("style", "val"): [("D", 21), ("E", 4), ("H", 12)],
}
ARTGAN_TRAIN, ARTGAN_VAL = set("AFGIJ"), set("BCDEH")   # B, C, D are val of one task, train of another


def write_artgan(root: Path, rows: dict | None = None, image_size: tuple[int, int] = (40, 30)) -> tuple[Path, Path]:
    """Write an image tree and split files as the ArtGAN download has them; returns (images, csvs)."""
    import numpy as np
    from PIL import Image

    images, csvs = root / "wikiart", root / "csv"
    csvs.mkdir(parents=True, exist_ok=True)
    for i, (letter, rel) in enumerate(sorted(ARTGAN_IMAGES.items())):
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((image_size[1], image_size[0], 3), (i * 25, 255 - i * 25, 128), np.uint8)
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
    for (task, split), entries in (ARTGAN_ROWS if rows is None else rows).items():
        if task == "artist":  # no extension, header line, blank line, ",," separator
            text = "(Path to image),, (Groundtruth class)\n\n" + "".join(
                f"{ARTGAN_IMAGES[k]},,{label}\n" for k, label in entries)
            (csvs / f"artist_{split}").write_text(text)
        else:
            text = "".join(f"{ARTGAN_IMAGES[k]},{label}\n" for k, label in entries)
            (csvs / f"{task}_{split}.csv").write_text(text)
    return images, csvs
