"""`wikiart-train` (`train.py` at the top, what `accelerate launch` runs): train the WikiArt CNN-RNN
classifier.

    accelerate launch train.py --task genre --shards DIR --out runs/genre
    wikiart-train --task genre --shards DIR --out runs/genre    # one process (the CPU smoke run)

Exit codes: 0 finished, 75 stopped by a signal / stop file with the state saved (resume with
--resume auto), 1 a clear error (bad input, non-finite loss, another rank died or hung past
--collective-timeout), 2 bad command line.
"""

from __future__ import annotations

import sys
from typing import Sequence

from ..config.options import parse_train_config
from ..model.backbones import PretrainedWeightsError
from ..runtime.errors import run_cli
from ..runtime.faults import CollectiveError, collective_failures
from ..train.engine import NonFiniteLossError
from ..train.loop import train
from ..train.setup import RunDirError

PROG = "train.py"  # the prog of parse_train_config's usage text: errors and usage name one program
# Errors of training whose message names the input or the failure: one line, exit 1.
TRAIN_ERRORS = (RunDirError, NonFiniteLossError, CollectiveError, PretrainedWeightsError)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (`wikiart-train`, `train.py`); argv None: sys.argv[1:]."""
    def command() -> int:
        cfg = parse_train_config(argv)
        with collective_failures(cfg.train.collective_timeout):  # a lost rank: one clear line, exit 1
            result = train(cfg)
        return result.get("exit_code", 0)
    return run_cli(PROG, command, extra_errors=TRAIN_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
