"""`--compile` on timm backbones, in process: TorchDynamo captures the CNN-RNN on a timm ViT and
ConvNeXt (patch tokens -> grid -> projection, attention pooling, heads), breaking the graph only
at the row/column GRUs (Dynamo runs nn.GRU eagerly: one break per GRU call, none in the
backbone), and the captured graphs, run through AOTAutograd, give the eager logits and
gradients. The backend here is `aot_eager` (the same capture and autograd split as inductor,
without generating C++, which takes minutes on this CPU); the trainer's `--compile` uses the
default inductor backend (train/setup.py: compile_model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wikiart.model.classifier import CNNRNNClassifier


@pytest.mark.parametrize("backbone, size", [("timm/test_vit", 32), ("timm/test_convnext", 64)])
def test_the_model_on_a_timm_backbone_compiles_whole_and_matches_eager(backbone, size):
    import torch._dynamo

    torch.manual_seed(0)
    model = CNNRNNClassifier(backbone=backbone, num_classes={"genre": 3, "style": 4}, image_size=size,
                             proj_dim=8, rnn_hidden=8, rnn_layers=1, rnn_dropout=0.0,
                             head_dropout=0.0).train()  # train mode, nothing random: outputs comparable
    x = torch.randn(2, 3, size, size)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.break_reasons and "RNN, GRU, or LSTM" in explained.break_reasons[0].reason
    for reason in explained.break_reasons:  # the GRU call and its continuation: nothing elsewhere
        where = [(Path(f.filename).name, f.name) for f in reason.user_stack]
        assert where[-1] == ("classifier.py", "fuse"), where
        assert not any("timm" in f.filename for f in reason.user_stack), where
    assert explained.graph_count == explained.graph_break_count + 1
    graphs = "\n".join(g.code for g in explained.graphs)
    assert "backbone" in explained.graphs[0].code  # the backbone is captured, not left eager
    assert "heads" in graphs

    compiled = torch.compile(model, backend="aot_eager")
    outputs, grads = [], []
    for net in (model, compiled):  # forward and backward of one before the other's forward
        model.zero_grad()
        out = net(x)
        sum(v.logsumexp(1).sum() for v in out.values()).backward()
        outputs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert outputs[0].keys() == outputs[1].keys() == {"genre", "style"}
    for head in outputs[0]:
        torch.testing.assert_close(outputs[1][head], outputs[0][head], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("backbone.") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5, msg=name)
