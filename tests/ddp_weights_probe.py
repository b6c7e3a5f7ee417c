"""Run under `accelerate launch`: train through the library, then save what each rank holds.

Used by tests to check that every rank ends with identical weights (DDP sync, including after
the backbone is unfrozen) — something only the ranks themselves can report.
"""

import sys
from pathlib import Path

import torch

from wikiart.config import parse_train_config
from wikiart.loop import fit
from wikiart.training import setup_job


def main() -> None:
    job = setup_job(parse_train_config(sys.argv[1:]))
    net = job.accelerator.unwrap_model(job.ctx.model)
    result = fit(job)
    final = {k: v.detach().clone() for k, v in net.state_dict().items()}
    rank = job.accelerator.process_index
    torch.save({"final": final, "backbone": [n for n, _ in net.named_parameters()
                                                                 if n.startswith("backbone.")]},
               Path(job.cfg["train"].out) / f"rank{rank}_weights.pt")
    sys.exit(result.get("exit_code", 0))


if __name__ == "__main__":
    main()
