"""Reusable buffers for the loader's image batches, handed back by the consumer.

A DataLoader worker passes each batch to the training process through shared memory, and
PyTorch's collation (like `data.stream.stack`) puts every batch into a fresh segment. Writing
into fresh memory faults in every page of it: on the 2-core development VM about 9 ms per
16 x 384 x 384 uint8 batch, against 1 ms for writing the same batch into memory already
faulted in - about 0.5 ms of a loader worker's ~4.5 ms per sample (`benchmarks/loader.py`).
So each reader (a worker, or the main process with `--workers 0`) keeps a few buffers
("slots") and writes its image batches into one the consumer has handed back.

The consumer hands a batch back with `release_batch(batch)` once it has copied the pixels
out: the training step and evaluation do, right after the device stage. Until then the
reader never writes into that slot. A consumer that never hands batches back - a plain
`for batch in loader` keeping every batch - gets a fresh buffer per batch, as without slots:
a batch is never overwritten under code that may still hold it.

The small tensors of a batch (labels, augmentation parameters) travel inside the pickled
message instead (`send_small_tensors_inline`, set up in each loader worker): PyTorch would
move each into its own shared-memory segment and pass a file descriptor through a socket
per tensor: ~3 ms of every batch on the development VM, for a few hundred bytes.

The slots' states are one shared integer array made in the consumer's process before the
workers start (like `CorruptCounter`): +n while the slot's n-th batch is out, -n once it is
handed back. A batch carries (pool token, slot, n), so a late or repeated release of an
earlier batch of the same slot finds another n and changes nothing. The pool is found by its
token in a registry of this process; the loader's dataset holds the pool, keeping it alive.
"""

from __future__ import annotations

import itertools
import multiprocessing
import weakref
from multiprocessing.reduction import ForkingPickler
from typing import Any, Sequence

import torch
from torch.multiprocessing import reductions

from .stream import stack

# Per reader: the DataLoader's prefetch (2 batches) + the batch being written + the one in use.
SLOTS_PER_READER = 4
INLINE_TENSOR_BYTES = 1 << 16  # smaller CPU tensors are sent by value, larger through shared memory

_POOLS: weakref.WeakValueDictionary[int, BatchBuffers] = weakref.WeakValueDictionary()
_TOKENS = itertools.count()


class BatchBuffers:
    """`slots` reusable image-batch buffers for each of `readers` readers of one loader."""

    def __init__(self, readers: int, slots: int = SLOTS_PER_READER):
        self.slots = slots
        self.token = next(_TOKENS)
        self._uses = multiprocessing.Array("q", max(1, readers) * slots)  # see the module docstring
        self._tensors: dict[int, torch.Tensor] = {}  # this reader's slot buffers
        _POOLS[self.token] = self

    def stack(self, tensors: Sequence[torch.Tensor], reader: int) -> tuple[torch.Tensor, tuple | None]:
        """`torch.stack(tensors)` written into a free slot of `reader` -> (batch, handle).

        The handle goes into the batch for `release_batch`; None when every slot of the
        reader is still in use: the batch is then in a fresh buffer, as `data.stream.stack` makes.
        """
        slot, use = self._claim(reader)
        if slot is None:
            return stack(list(tensors)), None
        out = self._tensors.get(slot)
        shape = (len(tensors), *tensors[0].shape)
        if out is None or out.shape != shape or out.dtype != tensors[0].dtype:
            out = self._tensors[slot] = stack(list(tensors))  # first use, or a short last batch
        else:
            torch.stack(list(tensors), out=out)
        return out, (self.token, slot, use)

    def _claim(self, reader: int) -> tuple[int | None, int]:
        first = reader * self.slots
        with self._uses.get_lock():
            for slot in range(first, first + self.slots):
                if self._uses[slot] <= 0:  # handed back (or never used)
                    use = 1 - self._uses[slot]
                    self._uses[slot] = use
                    return slot, use
        return None, 0

    def release(self, slot: int, use: int) -> None:
        """The consumer is done with the batch written as `use` into `slot`."""
        with self._uses.get_lock():
            if self._uses[slot] == use:
                self._uses[slot] = -use


def release_batch(batch: dict[str, Any]) -> None:
    """Hand `batch`'s image buffer back to its reader for reuse; call it once nothing reads
    `batch["image"]` any more. A no-op for batches not in a slot, and when repeated."""
    handle = batch.pop("buffer", None)
    if handle is None:
        return
    token, slot, use = handle
    pool = _POOLS.get(token)
    if pool is not None:
        pool.release(slot, use)


def send_small_tensors_inline() -> None:
    """In this process (a loader worker), pickle CPU tensors of up to INLINE_TENSOR_BYTES by
    value when sending them to another process; larger ones keep PyTorch's shared memory."""
    ForkingPickler.register(torch.Tensor, _reduce_tensor)


def _reduce_tensor(tensor: torch.Tensor):
    if (type(tensor) is torch.Tensor and tensor.device.type == "cpu" and tensor.layout == torch.strided
            and not tensor.requires_grad and tensor.nbytes <= INLINE_TENSOR_BYTES):
        raw = tensor.contiguous().reshape(-1).view(torch.uint8)
        return _tensor_from_bytes, (raw.numpy().tobytes(), tensor.dtype, tuple(tensor.shape))
    return reductions.reduce_tensor(tensor)


def _tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)
