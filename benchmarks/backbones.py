"""Backbones side by side: the CNN-RNN's training step (forward + backward) in images/s on the
CPU, and, for the README's table of suggested backbones, parameter count and feature grid.

    python -m benchmarks.backbones            # speed: small backbones at 112 px, taking turns
    python -m benchmarks.backbones --table    # params and grid of the suggested backbones (random
                                              # weights, nothing downloaded; builds ViT-Ls: minutes)

Speed: each model is the whole classifier (backbone -> projection -> row/column GRUs -> heads,
one 10-class head) with random weights, 1 thread, batch 4, at 112 px (a multiple of both 14 and
16, so every ViT takes it). The models take turns step by step for `--rounds` rounds after one
warm-up step each, so the machine's drift hits them alike; the median step time is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wikiart.model.classifier import CNNRNNClassifier

SPEED_BACKBONES = ("resnet18", "resnet50", "timm/resnet50.a1_in1k", "timm/convnext_tiny.fb_in22k_ft_in1k",
                   "timm/vit_small_patch16_224.augreg_in21k_ft_in1k", "timm/vit_small_patch14_dinov2.lvd142m")
SUGGESTED = ("resnet50", "timm/convnext_base.fb_in22k_ft_in1k", "timm/swin_base_patch4_window12_384.ms_in22k_ft_in1k",
             "timm/vit_base_patch14_dinov2.lvd142m", "timm/vit_large_patch14_dinov2.lvd142m",
             "timm/vit_base_patch16_clip_224.openai", "timm/vit_large_patch14_clip_224.openai")
HEADS = {"genre": 10}


def build(name: str, size: int) -> CNNRNNClassifier:
    torch.manual_seed(0)
    return CNNRNNClassifier(backbone=name, num_classes=HEADS, image_size=size, attention_pool="linear")


def step_seconds(model: CNNRNNClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x)["genre"], y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def speed(names: tuple[str, ...], size: int, batch: int, rounds: int) -> None:
    models = {n: build(n, size).train() for n in names}
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    times: dict[str, list[float]] = {n: [] for n in names}
    for model in models.values():
        step_seconds(model, x, y)  # warm-up
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for n in order:
            times[n].append(step_seconds(models[n], x, y))
    print(f"CPU, {torch.get_num_threads()} thread(s), batch {batch}, {size} px, forward + backward of the whole "
          f"CNN-RNN, median of {rounds} steps taking turns\n")
    print("| backbone | params (M) | grid | step ms | images/s |\n|---|---|---|---|---|")
    for n in names:
        grid = tuple(models[n].backbone(x[:1]).shape[-2:])
        median = statistics.median(times[n])
        params = sum(p.numel() for p in models[n].backbone.parameters()) / 1e6
        print(f"| {n} | {params:.1f} | {grid[0]}x{grid[1]} | {median * 1e3:.0f} | {batch / median:.1f} |")


@torch.no_grad()
def table(names: tuple[str, ...], size: int) -> None:
    print(f"| backbone | backbone params (M) | input multiple | feature grid at {size} px | channels |\n|---|---|---|---|---|")
    for n in names:
        try:
            model = build(n, size).eval()
        except ValueError as exc:  # the size does not fit: say what does
            multiple = int(str(exc).split("use a multiple of ")[1].split(" ")[0])
            fits = [s for s in (size - size % multiple, size - size % multiple + multiple)]
            model, note = build(n, fits[1]).eval(), f"refused ({size} is not a multiple of {multiple}); at {fits[1]}: "
        else:
            note = ""
        info = model.backbone_info()
        grid = tuple(model.backbone(torch.zeros(1, 3, model.image_size, model.image_size)).shape[-2:])
        params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
        print(f"| {n} | {params:.1f} | {info['input_multiple']} | {note}{grid[0]}x{grid[1]} | "
              f"{info['feature_channels']} |", flush=True)
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="params and grid of the suggested backbones")
    parser.add_argument("--size", type=int, default=None, help="image size (default: 112 speed, 384 table)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.table:
        table(SUGGESTED, args.size or 384)
    else:
        speed(SPEED_BACKBONES, args.size or 112, args.batch, args.rounds)


if __name__ == "__main__":
    main()
