"""What a fresh interpreter loads: prep and its command never load torch; evaluate's and
predict's commands load neither the trainer nor the builder (the import graph:
tests/unit/test_layers.py)."""

from __future__ import annotations

import ast


def test_prep_loads_no_torch_when_imported():
    """Not only no `import torch` in prep's files: nothing prep imports may load it (webdataset does);
    nor does its command, so `wikiart-build-shards` starts fast on a login node."""
    import subprocess
    import sys
    code = ("import sys, wikiart.prep.build, wikiart.prep.write, wikiart.cli.build_shards; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_evaluate_command_loads_neither_the_trainer_nor_the_builder():
    import subprocess
    import sys
    code = ("import sys, wikiart.cli.evaluate, wikiart.cli.predict; "
            "print(sorted({m for m in sys.modules if m.startswith('wikiart.')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    modules = set(ast.literal_eval(out))  # a printed list of module names
    assert not {m.split(".")[1] for m in modules} & {"train", "prep"}, modules
    assert {m for m in modules if m.startswith("wikiart.cli.")} == {"wikiart.cli.evaluate", "wikiart.cli.predict"}
