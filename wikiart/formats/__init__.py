"""The on-disk contracts every stage shares: labels, manifest.json, images, training checkpoints."""
