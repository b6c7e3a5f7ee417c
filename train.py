"""Train the WikiArt CNN-RNN classifier (the command: wikiart.cli.train, also `wikiart-train`).

    accelerate launch train.py --task genre --shards DIR --out runs/genre
    python train.py ...            # one process (the CPU smoke run)

Exit codes: 0 finished, 75 stopped by a signal / stop file with the state saved (resume with
--resume auto), 1 a clear error (bad input, non-finite loss, another rank died or hung past
--collective-timeout), 2 bad command line.
"""

import sys

from wikiart.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
