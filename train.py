"""Train the WikiArt CNN-RNN classifier.

    accelerate launch train.py --task genre --shards DIR --out runs/genre
    python train.py ...            # one process (the CPU smoke run)

Exit codes: 0 finished, 75 stopped by a signal / stop file with the state saved (resume with
--resume auto), 1 a clear error (bad input, non-finite loss), 2 bad command line.
"""

import sys

from wikiart.cli import run_cli
from wikiart.config import parse_train_config
from wikiart.engine import NonFiniteLossError
from wikiart.loop import train
from wikiart.training import RunDirError


def main() -> int:
    result = train(parse_train_config(sys.argv[1:]))
    return result.get("exit_code", 0)


if __name__ == "__main__":
    sys.exit(run_cli("train.py", main, extra_errors=(RunDirError, NonFiniteLossError)))
