"""Train the WikiArt CNN-RNN classifier.

    accelerate launch train.py --task genre --shards DIR --out runs/genre
    python train.py ...            # one process (the CPU smoke run)

Exit codes: 0 finished, 75 stopped by a signal / stop file with the state saved (resume with
--resume auto), 1 a clear error (bad input, non-finite loss, another rank died or hung past
--collective-timeout), 2 bad command line.
"""

import sys

from wikiart.model.backbones import PretrainedWeightsError
from wikiart.runtime.errors import run_cli
from wikiart.config.options import parse_train_config
from wikiart.train.engine import NonFiniteLossError
from wikiart.runtime.faults import CollectiveError, collective_failures
from wikiart.train.loop import train
from wikiart.train.setup import RunDirError


def main() -> int:
    cfg = parse_train_config(sys.argv[1:])
    with collective_failures(cfg["train"].collective_timeout):  # a lost rank: one clear line, exit 1
        result = train(cfg)
    return result.get("exit_code", 0)


if __name__ == "__main__":
    sys.exit(run_cli("train.py", main,
                     extra_errors=(RunDirError, NonFiniteLossError, CollectiveError, PretrainedWeightsError)))
