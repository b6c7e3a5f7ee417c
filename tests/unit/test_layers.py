"""The package layering: `ls wikiart/` reads as the data flow, and each stage imports only from
the stages before it (docs/architecture in DESIGN.md):

    config -> runtime -> formats -> prep | data | model | hub -> evaluate -> train -> cli

Packages of one tier do not import each other; `prep` and `config` never import torch;
`evaluate` never imports `train` or `prep`. Every import counts, module-level or inside a
function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.training import ROOT

PACKAGE = ROOT / "wikiart"
LAYERS = [{"config"}, {"runtime"}, {"formats"}, {"prep", "data", "model", "hub"}, {"evaluate"}, {"train"}, {"cli"}]
RANK = {pkg: i for i, tier in enumerate(LAYERS) for pkg in tier}
NO_TORCH = {"config", "prep"}
NEVER = {("evaluate", "prep"), ("evaluate", "train")}  # scoring a model needs neither the builder nor the trainer
# Edges that break the rule today, each to be removed by moving code to its owner (issue 17).
ALLOWED: set[tuple[str, str]] = set()


def imports_of(path: Path) -> set[str]:
    """Top-level names of what `path` imports: wikiart packages as 'wikiart.<pkg>', others bare."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # ("wikiart", "train")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            found |= set(names)
    return {".".join(n.split(".")[:2]) if n.startswith("wikiart.") else n.split(".")[0] for n in found}


def edges() -> set[tuple[str, str, str]]:
    """(source package, imported wikiart package or external module, file)."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue  # wikiart/__init__.py
        for target in imports_of(path):
            out.add((parts[0], target, str(path.relative_to(PACKAGE))))
    return out


def test_every_module_lives_in_a_stage_package():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(RANK)


def test_packages_import_only_from_the_stages_before_them():
    bad = sorted((src, tgt[len("wikiart."):], f) for src, tgt, f in edges() if tgt.startswith("wikiart.")
                 and tgt[len("wikiart."):] != src
                 and (RANK[tgt[len("wikiart."):]] >= RANK[src] or (src, tgt[len("wikiart."):]) in NEVER)
                 and (src, tgt[len("wikiart."):]) not in ALLOWED)
    assert not bad, "imports against the flow:\n" + "\n".join(f"{f}: {s} -> {t}" for s, t, f in bad)


def test_the_allow_list_holds_only_edges_that_still_exist():
    present = {(src, tgt[len("wikiart."):]) for src, tgt, _ in edges() if tgt.startswith("wikiart.")}
    assert ALLOWED <= present, f"stale allow-list entries: {sorted(ALLOWED - present)}"


def test_config_and_prep_never_import_torch():
    bad = sorted(f for src, tgt, f in edges() if src in NO_TORCH and tgt in ("torch", "torchvision"))
    assert not bad, f"torch imported by {bad}"


def test_one_module_reads_shard_tars():
    """formats/shard.py owns the member format's reading; prep/write.py only writes tars."""
    openers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "tarfile.open(" in p.read_text())
    assert openers == ["formats/shard.py", "prep/write.py"]
    assert "tarfile.open(self.tmp, \"w\"" in (PACKAGE / "prep" / "write.py").read_text()
