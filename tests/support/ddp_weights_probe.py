"""Run under `accelerate launch`: train through the library, then save what each rank holds.

Used by tests to check that every rank ends with identical weights (DDP sync, including after
the backbone is unfrozen) and what training loss each rank had at each step (in all and per
head, with the head's labelled rows) — something only the ranks themselves can report.
"""

import sys
from pathlib import Path

import torch

from wikiart.config.options import parse_train_config
from wikiart.train.loop import StepHooks, fit
from wikiart.train.setup import setup_job

LOSSES: dict[int, float] = {}  # this rank's training loss per optimizer step
TASK_LOSSES: dict[int, tuple[list[float], list[float]]] = {}  # per step: per-head loss sums, labelled rows
_hook = StepHooks.__call__


def _recording_hook(self, metrics):
    step = self.job.state.step
    LOSSES[step] = float(metrics["loss"])
    TASK_LOSSES[step] = (metrics["task_loss_sums"].tolist(), metrics["task_rows"].tolist())
    return _hook(self, metrics)


def main() -> None:
    StepHooks.__call__ = _recording_hook
    job = setup_job(parse_train_config(sys.argv[1:]))
    net = job.accelerator.unwrap_model(job.ctx.model)
    result = fit(job)
    final = {k: v.detach().clone() for k, v in net.state_dict().items()}
    rank = job.accelerator.process_index
    torch.save({"final": final, "losses": LOSSES, "task_losses": TASK_LOSSES, "heads": list(job.ctx.heads),
                "backbone": [n for n, _ in net.named_parameters() if n.startswith("backbone.")]},
               Path(job.cfg.train.out) / f"rank{rank}_weights.pt")
    sys.exit(result.get("exit_code", 0))


if __name__ == "__main__":
    main()
