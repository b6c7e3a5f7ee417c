"""Train the WikiArt CNN-RNN classifier.

    accelerate launch train.py --task genre --shards DIR --out runs/genre
    python train.py ...            # one process (the CPU smoke run)
"""

import sys

from wikiart.cli import run_cli
from wikiart.config import parse_train_config
from wikiart.engine import NonFiniteLossError
from wikiart.training import RunDirError, train


def main() -> int:
    cfg = parse_train_config(sys.argv[1:])
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("train.py", main, extra_errors=(RunDirError, NonFiniteLossError)))
