"""Shards -> batches on the device: streams, balancing, transforms, shared buffers, the device augmentation stage."""
