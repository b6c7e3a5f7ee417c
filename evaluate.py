"""Evaluate a trained checkpoint on a split of the shards: metrics, reports, outliers.

    accelerate launch evaluate.py --checkpoint runs/genre --shards shards/ --out eval/genre
    python evaluate.py --checkpoint runs/genre/best --shards shards/ --out eval/genre --outliers --tta flip
"""

import sys

from wikiart.evaluate.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
