"""Evaluate a trained checkpoint on a split of the shards: metrics, reports, outliers
(the command: wikiart.cli.evaluate, also `wikiart-evaluate`).

    accelerate launch evaluate.py --checkpoint runs/genre --shards shards/ --out eval/genre
    python evaluate.py --checkpoint runs/genre/best --shards shards/ --out eval/genre --outliers --tta flip

Exit codes: 0 done, 1 a clear error (bad checkpoint, shards or --out, Hub failure), 2 bad command line.
"""

import sys

from wikiart.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
