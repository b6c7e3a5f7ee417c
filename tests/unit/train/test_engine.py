"""evaluate.score.evaluate in-process: module modes survive evaluation, counts are checked."""

import warnings

import pytest
import torch
from accelerate import Accelerator

from wikiart.config.options import ModelConfig
from wikiart.evaluate.score import evaluate
from wikiart.model.classifier import from_config


def _batches(n: int, size: int = 4):
    gen = torch.Generator().manual_seed(0)
    for start in range(0, n, size):
        count = min(size, n - start)
        yield {"image": torch.randn(count, 3, 32, 32, generator=gen),
               "labels": {"genre": torch.randint(0, 3, (count,), generator=gen)},
               "key": [f"k{start + i:03d}" for i in range(count)]}


@pytest.fixture(scope="module")
def net():
    return from_config(ModelConfig(backbone="resnet18", pretrained=False, proj_dim=8, rnn_hidden=8, rnn_layers=1),
                       {"genre": ["a", "b", "c"]}, 32)


def test_evaluation_restores_each_modules_mode(net):
    """A frozen BatchNorm kept in eval mode during training must still be in eval mode after a
    mid-epoch validation (otherwise its running stats drift and resume is no longer exact)."""
    net.train()
    net.backbone.bn1.eval()
    out = evaluate(Accelerator(cpu=True), net, list(_batches(10)), ["genre"], expected=10)
    assert out.keys == [f"k{i:03d}" for i in range(10)] and out.logits["genre"].shape == (10, 3)
    assert net.training and net.heads.training
    assert not net.backbone.bn1.training


def test_fewer_samples_than_the_manifest_warns_and_more_is_an_error(net):
    acc = Accelerator(cpu=True)
    with pytest.warns(UserWarning, match="scored 8 of the 10 samples"):
        evaluate(acc, net, list(_batches(8)), ["genre"], expected=10)
    with pytest.raises(RuntimeError, match="disagree"):
        evaluate(acc, net, list(_batches(12)), ["genre"], expected=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(acc, net, list(_batches(10)), ["genre"], expected=10)
