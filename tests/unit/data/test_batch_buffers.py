"""Reusable image-batch buffers: reused only once handed back, never overwritten while held.

Real shards, real DataLoader worker processes writing into shared memory."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch

from tests.support.shards import make_shards
from wikiart.data.buffers import (INLINE_TENSOR_BYTES, SLOTS_PER_READER, BatchBuffers, release_batch,
                                  send_small_tensors_inline)
from wikiart.config.options import DataConfig
from wikiart.data.loader import build_eval_data, build_train_data
from wikiart.data.device import DeviceAugment
from wikiart.data.transforms import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("buffers"), {"train": [60, 60, 40], "val": [45]})


def config(workers: int) -> DataConfig:
    return DataConfig(task="genre", image_size=32, batch_size=8, workers=workers, shuffle_buffer=16)


def train_loader(manifest, workers: int, epoch: int = 0):
    return build_train_data(manifest, config(workers), rank=0, world_size=1, epoch=epoch, seed=3).loader


def reference_images(loader) -> list[torch.Tensor]:
    """The images of every batch, copied on arrival, never handed back: fresh buffers only."""
    return [batch["image"].clone() for batch in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_handed_back_buffers_are_reused_and_every_batch_is_intact(shards, workers):
    expected = reference_images(train_loader(shards, workers))
    seen, fresh, slots = [], 0, set()
    for batch in train_loader(shards, workers):
        seen.append(batch["image"].clone())
        if "buffer" in batch:
            slots.add(batch["buffer"][1])
        else:
            fresh += 1
        release_batch(batch)
    assert len(seen) == len(expected) == 20
    # A reader writing into a slot still queued or in use would show another batch's pixels.
    assert all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert fresh == 0  # every batch went into a slot...
    assert len(slots) <= SLOTS_PER_READER * max(1, workers)  # ...of a few, reused


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_never_handed_back_are_never_overwritten(shards, workers):
    expected = reference_images(train_loader(shards, workers))
    held = list(train_loader(shards, workers))  # every batch kept, none released
    assert all(torch.equal(batch["image"], image) for batch, image in zip(held, expected))
    in_slots = sum("buffer" in batch for batch in held)
    assert in_slots == SLOTS_PER_READER * max(1, workers)  # the rest got fresh buffers


def test_training_device_stage_then_release_sees_the_right_pixels(shards):
    """The training step's order - device stage, then release - on 2 workers equals the
    device stage over batches never handed back."""
    stage = DeviceAugment.for_recipe((0.1, 0.1, 0.1, 0.02), 0.5, IMAGENET_MEAN, IMAGENET_STD)
    cpu = torch.device("cpu")
    expected = [stage(batch, cpu, i) for i, batch in enumerate(train_loader(shards, 2, epoch=1))]
    for i, batch in enumerate(train_loader(shards, 2, epoch=1)):
        images = stage(batch, cpu, i)
        release_batch(batch)
        assert torch.equal(images, expected[i])


def test_eval_short_last_batch_gets_its_own_buffer(shards):
    info = build_eval_data(shards, "val", config(2), rank=0, world_size=1)
    sizes = []
    for batch in info.loader:
        sizes.append(batch["image"].shape[0])
        assert "buffer" in batch
        release_batch(batch)
    assert sorted(sizes) == [5, 8, 8, 8, 8, 8]  # 45 samples over 2 readers: 3 + 3 batches


def test_a_late_release_of_an_earlier_batch_frees_nothing():
    pool = BatchBuffers(readers=1, slots=2)
    images = [torch.full((4, 4, 3), i, dtype=torch.uint8) for i in range(2)]
    first, handle = pool.stack(images, reader=0)
    slot = handle[1]
    release_batch({"buffer": handle})
    again, handle2 = pool.stack(images, reader=0)
    assert handle2[1] == slot and again.data_ptr() == first.data_ptr()  # the handed-back slot
    release_batch({"buffer": handle})  # the first batch's handle: stale
    _, handle3 = pool.stack(images, reader=0)
    assert handle3[1] != slot  # the slot still holds the second batch
    _, handle4 = pool.stack(images, reader=0)
    assert handle4 is None  # both slots out: a fresh buffer
    batch = {"buffer": list(handle2)}  # the DataLoader's pin_memory turns tuples into lists (CUDA)
    release_batch(batch)
    release_batch(batch)  # repeated: a no-op
    assert "buffer" not in batch
    changed = [torch.full((2, 2, 3), 9, dtype=torch.uint8)]
    out, handle5 = pool.stack(changed, reader=0)  # another shape: the slot gets a new buffer
    assert handle5[1] == slot and out.shape == (1, 2, 2, 3) and int(out.max()) == 9


def test_small_tensors_travel_by_value_and_large_ones_through_shared_memory(monkeypatch):
    # What a loader worker sets up, undone after the test (the registry is process-wide).
    monkeypatch.setitem(ForkingPickler._extra_reducers, torch.Tensor, ForkingPickler._extra_reducers[torch.Tensor])
    send_small_tensors_inline()
    small = [torch.arange(48).reshape(16, 3), torch.rand(16, 8), torch.tensor(True), torch.zeros(0, 3),
             torch.rand(4).bfloat16(), torch.arange(10)[::2], torch.rand(3, 4).t()]
    for tensor in small:
        data = ForkingPickler.dumps(tensor)
        assert len(data) >= tensor.nbytes  # the values are in the message
        back = pickle.loads(data)
        assert back.dtype == tensor.dtype and back.shape == tensor.shape and torch.equal(back, tensor)
        assert not back.is_shared()
        saved = tensor.clone()
        back.fill_(1)  # writable, and not a view of the sender's tensor
        assert torch.equal(tensor, saved)
    large = torch.rand(INLINE_TENSOR_BYTES // 4 + 1)
    data = ForkingPickler.dumps(large)
    assert len(data) < 1000 and torch.equal(pickle.loads(data), large)  # a shared-memory handle
