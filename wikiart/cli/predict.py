"""`wikiart-predict`: classify image files with a trained checkpoint (wikiart.evaluate.predict).

    wikiart-predict --checkpoint runs/genre IMAGE [IMAGE ...] [--json] [--top-k 5] [--explain DIR]
    python -m wikiart.cli.predict --checkpoint user/wikiart-combined painting.webp

Prints the top-k classes with probabilities for every head, as tables or (--json) one JSON
document. With --explain DIR, one PNG per image of where the model looked (attention and Grad-CAM
overlays) goes into DIR, and the JSON names it per image ("explain"). An unreadable file is reported by name on stderr, the others are still classified.
Exit codes: 0 every image classified, 1 an unreadable image or a clear error, 2 bad command line.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from ..config.options import PredictConfig, parse_predict_config
from ..evaluate.predict import predict
from ..runtime.errors import run_cli

PROG = "wikiart-predict"


def print_tables(console: Console, results: list[dict[str, Any]]) -> None:
    """One table per image: task, rank, class, probability."""
    for item in results:
        console.print(item["image"], style="bold", soft_wrap=True)  # a long path stays one line
        table = Table()
        for name in ("task", "#", "class", "probability"):
            table.add_column(name, justify="right" if name in ("#", "probability") else "left")
        for task, ranked in item["predictions"].items():
            for rank, entry in enumerate(ranked, start=1):
                table.add_row(task if rank == 1 else "", str(rank), entry["class"], f"{entry['probability']:.4f}")
            table.add_section()
        console.print(table)


def run(cfg: PredictConfig) -> int:
    """Classify, print the results and the unreadable files; 1 if any file was unreadable."""
    results, failures = predict(cfg)
    if cfg.json:
        print(json.dumps({"predictions": results, "errors": failures}, indent=1), flush=True)
    else:
        console = Console(highlight=False)
        print_tables(console, results)
        if cfg.explain:
            console.print(f"wrote {len(results)} maps of where the model looked to {cfg.explain}", soft_wrap=True)
    for failure in failures:
        print(f"{PROG}: error: {failure['image']}: {failure['error']}", file=sys.stderr, flush=True)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (`wikiart-predict`, `python -m wikiart.cli.predict`)."""
    return run_cli(PROG, lambda: run(parse_predict_config(argv)))


if __name__ == "__main__":
    sys.exit(main())
