"""The commands' shared plumbing (runtime/errors.py), in process."""

from __future__ import annotations

import gc

from wikiart.config.options import ConfigError
from wikiart.runtime.errors import run_cli


def test_run_cli_freezes_the_imports_and_turns_known_errors_into_one_line(capsys):
    seen = {}

    def command():
        seen["frozen"] = gc.get_freeze_count()
        raise ConfigError("--batch-size must be at least 1\n(got 0)")

    try:
        assert run_cli("wikiart-train", command) == 1
        assert run_cli("wikiart-train", lambda: 3) == 3
    finally:
        gc.unfreeze()  # this pytest process goes on collecting as before
    assert seen["frozen"] > 10_000  # the modules imported so far, moved out of the collector's way
    assert capsys.readouterr().err == "wikiart-train: error: --batch-size must be at least 1 (got 0)\n"
