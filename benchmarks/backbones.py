"""Backbones side by side: the CNN-RNN's training step (forward + backward) in images/s on the
CPU, and, for the README's table of suggested backbones, parameter count and feature grid.

    python -m benchmarks.backbones            # speed: small backbones at 112 px, taking turns
    python -m benchmarks.backbones --table    # params and grid of the suggested backbones (random
                                              # weights, nothing downloaded; builds ViT-Ls: minutes)
    python -m benchmarks.backbones --device cuda   # on a GPU: the suggested backbones at 384 px
                                                   # (392 for patch-14 ViTs), bf16 autocast, batch 32

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


def build_fitting(name: str, size: int) -> CNNRNNClassifier:
    """The model at `size`, or at the next size up its backbone takes (a patch-14 ViT: 392 for
    384); its `image_size` says which."""
    try:
        return build(name, size)
    except ValueError as exc:
        multiple = int(str(exc).split("use a multiple of ")[1].split(" ")[0])
        return build(name, size - size % multiple + multiple)


def step_seconds(model: CNNRNNClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda):
        loss = torch.nn.functional.cross_entropy(model(x)["genre"], y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def speed(names: tuple[str, ...], size: int, batch: int, rounds: int, device: str = "cpu") -> None:
    models = {n: build_fitting(n, size).train().to(device) for n in names}
    sizes = {n: m.image_size for n, m in models.items()}
    inputs = {n: (torch.randn(batch, 3, sizes[n], sizes[n], device=device),
                  torch.randint(0, 10, (batch,), device=device)) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for n, model in models.items():
        step_seconds(model, *inputs[n])  # warm-up
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for n in order:
            times[n].append(step_seconds(models[n], *inputs[n]))
    where = torch.cuda.get_device_name() + ", bf16 autocast" if device == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"{where}, batch {batch}, forward + backward of the whole CNN-RNN, median of {rounds} steps "
          f"taking turns\n")
    print("| backbone | params (M) | px | grid | step ms | images/s |\n|---|---|---|---|---|---|")
    for n in names:
        grid = tuple(models[n].backbone(inputs[n][0][:1]).shape[-2:])
        median = statistics.median(times[n])
        params = sum(p.numel() for p in models[n].backbone.parameters()) / 1e6
        print(f"| {n} | {params:.1f} | {sizes[n]} | {grid[0]}x{grid[1]} | {median * 1e3:.0f} | "
              f"{batch / median:.1f} |", flush=True)


@torch.no_grad()
def table(names: tuple[str, ...], size: int) -> None:
    print(f"| backbone | backbone params (M) | input multiple | feature grid at {size} px | channels |\n|---|---|---|---|---|")
    for n in names:
        model = build_fitting(n, size).eval()
        note = "" if model.image_size == size else \
            f"refused ({size} is not a multiple of {model.backbone_info()['input_multiple']}); at {model.image_size}: "
        info = model.backbone_info()
        grid = tuple(model.backbone(torch.zeros(1, 3, model.image_size, model.image_size)).shape[-2:])
        params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
        print(f"| {n} | {params:.1f} | {info['input_multiple']} | {note}{grid[0]}x{grid[1]} | "
              f"{info['feature_channels']} |", flush=True)
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="params and grid of the suggested backbones")
    parser.add_argument("--size", type=int, default=None,
                        help="image size (default: 112 on the CPU, 384 on CUDA and for --table)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: the suggested backbones, bf16 autocast (the GPU column)")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 on the CPU, 32 on CUDA")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if args.table:
        table(SUGGESTED, args.size or 384)
    else:
        speed(SUGGESTED if cuda else SPEED_BACKBONES, args.size or (384 if cuda else 112),
              args.batch or (32 if cuda else 4), args.rounds, args.device)


if __name__ == "__main__":
    main()
