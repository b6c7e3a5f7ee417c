"""Where the model looked: its own attention as a map over the feature grid, and Grad-CAM per head.

The RNN branch pools the backbone's (projected) map twice: the row GRU's attention weighs the
H rows (each row summarised as the mean of its BiGRU steps, all columns alike), the column
GRU's attention weighs the W columns. Their outer product

    attention[i, j] = row_weight[i] * column_weight[j]

is a map over the grid whose row sums are exactly the row weights and whose column sums are
exactly the column weights (both sum to one), so it shows the model's pooling and nothing
more: it peaks where an attended row crosses an attended column. It is shared by the heads
(they all read the same fused features). A `--no-rnn` model pools by plain averaging: it has
no attention, and `attention` is None.

Grad-CAM (Selvaraju et al.) is computed per head for its predicted class (or a given class):
the gradient of that logit with respect to the backbone's last map, averaged over the grid,
weighs the map's channels; the ReLU of the weighted sum, normalised to sum to one (uniform
where it is zero everywhere), is the map. Plain autograd, no hooks: the backbone runs under
no_grad and only the part after its map is differentiated; parameters get no gradients.

Nothing here runs in training: `CNNRNNClassifier.fuse` returns the weights it computes anyway.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from .classifier import CNNRNNClassifier


@dataclasses.dataclass
class Explanation:
    """One batch's maps, on the CPU in fp32; grids are (B, H, W) of the backbone's feature map."""
    logits: dict[str, torch.Tensor]      # task -> (B, classes)
    predicted: dict[str, torch.Tensor]   # task -> (B,) argmax
    row_weights: torch.Tensor | None     # (B, H), each row sums to one; None: no RNN branch
    col_weights: torch.Tensor | None     # (B, W)
    attention: torch.Tensor | None       # (B, H, W), the outer product; sums to one
    gradcam: dict[str, torch.Tensor]     # task -> (B, H, W), non-negative, sums to one

    def __len__(self) -> int:
        return len(next(iter(self.logits.values())))


def attention_map(row_weights: torch.Tensor, col_weights: torch.Tensor) -> torch.Tensor:
    """(B, H) x (B, W) -> (B, H, W): the joint of the row and column attention."""
    return row_weights[:, :, None] * col_weights[:, None, :]


def gradcam(fmap: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of a (B, C, H, W) map and the gradient of one logit per image: (B, H, W) summing to one."""
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(dim=1))
    total = cam.sum(dim=(1, 2), keepdim=True)
    uniform = torch.full_like(cam, 1.0 / (cam.shape[1] * cam.shape[2]))
    return torch.where(total > 0, cam / total.clamp_min(torch.finfo(cam.dtype).tiny), uniform)


def explain(model: CNNRNNClassifier, images: torch.Tensor,
            classes: Mapping[str, torch.Tensor] | None = None) -> Explanation:
    """Logits, attention and per-head Grad-CAM of normalised `images` (B, 3, S, S) on the model's
    device; Grad-CAM explains `classes[task]` (B,) where given, else the predicted class. The model
    is put in eval mode for the call (dropout and batch statistics would change the maps)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fmap = model.backbone(images).float()
        fmap.requires_grad_(True)
        # cuDNN's GRU has no backward in eval mode; the native kernels compute the same thing.
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            features, row_weights, col_weights = model.fuse(fmap)
            logits = model.classify(features)
            predicted = {t: v.argmax(dim=1) for t, v in logits.items()}
            targets = {t: (classes or {}).get(t, predicted[t]).to(fmap.device) for t in logits}
            grads = [torch.autograd.grad(v.gather(1, targets[t].view(-1, 1)).sum(), fmap, retain_graph=True)[0]
                     for t, v in logits.items()]
    finally:
        model.train(was_training)
    fmap = fmap.detach()
    cams = {t: gradcam(fmap, g).cpu() for t, g in zip(logits, grads)}
    rows = row_weights.detach().float().cpu() if row_weights is not None else None
    cols = col_weights.detach().float().cpu() if col_weights is not None else None
    return Explanation(logits={t: v.detach().float().cpu() for t, v in logits.items()},
                       predicted={t: v.cpu() for t, v in predicted.items()}, row_weights=rows, col_weights=cols,
                       attention=attention_map(rows, cols) if rows is not None else None, gradcam=cams)


def peak(grid: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the largest cell of an (H, W) map."""
    index = int(grid.flatten().argmax())
    return divmod(index, grid.shape[1])
