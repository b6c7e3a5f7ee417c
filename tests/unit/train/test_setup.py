"""Setting up a job (train/setup.py), in-process: a compiler that fails leaves the eager model
(the resume and run-directory checks: test_resume_rules.py)."""

from __future__ import annotations

import torch


def test_compile_falls_back_to_eager_when_the_compiler_fails(monkeypatch, capsys):
    """`--compile` never stops a run: a compiler that cannot start leaves the eager model."""
    from wikiart.train.setup import compile_model

    def broken_compile(model, **kwargs):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = torch.nn.Linear(2, 2)
    assert compile_model(model) is model
    assert "running eagerly" in capsys.readouterr().out
