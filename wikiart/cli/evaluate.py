"""`wikiart-evaluate` (`evaluate.py` at the top, what `accelerate launch` runs): score a trained
checkpoint on a split of the shards and write metrics, reports and outliers
(wikiart.evaluate.run.run_evaluation).

    accelerate launch evaluate.py --checkpoint DIR_OR_HUB_ID --shards DIR --out DIR [--outliers]
    wikiart-evaluate --checkpoint runs/genre/best --shards shards/ --out eval/genre --tta flip

Exit codes: 0 done, 1 a clear error (bad checkpoint, shards or --out, Hub failure), 2 bad command line.
"""

from __future__ import annotations

import sys
from typing import Sequence

from ..config.options import parse_eval_config
from ..evaluate.run import run_evaluation
from ..hub.client import HubError
from ..runtime.errors import run_cli

PROG = "evaluate.py"  # the prog of parse_eval_config's usage text


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (`wikiart-evaluate`, `evaluate.py`); argv None: sys.argv[1:]."""
    def command() -> int:
        run_evaluation(parse_eval_config(argv))
        return 0
    return run_cli(PROG, command, extra_errors=(HubError,))


if __name__ == "__main__":
    sys.exit(main())
