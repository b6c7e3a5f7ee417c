"""One module of wikiart/cli per command, each with `main(argv) -> int`, each installed as a
console script (setup.cfg), and the installed scripts run."""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import inspect

from tests.support.training import ROOT

COMMANDS = {"wikiart-train", "wikiart-evaluate", "wikiart-build-shards", "wikiart-predict",
            "wikiart-import-seed", "wikiart-demo"}


def declared_scripts() -> dict[str, str]:
    """setup.cfg's console_scripts: name -> 'module:function'."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, target in (line.split("=", 1) for line in lines)}


def test_every_console_script_is_the_main_of_a_cli_module():
    scripts = declared_scripts()
    assert set(scripts) == COMMANDS
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert module.startswith("wikiart.cli.") and attr == "main", (name, target)
        main = getattr(importlib.import_module(module), attr)
        assert callable(main) and list(inspect.signature(main).parameters) == ["argv"], (name, target)
    # and every command module has its script: no command only reachable with `python -m`
    modules = {p.stem for p in (ROOT / "wikiart" / "cli").glob("*.py") if p.stem != "__init__"}
    assert {target.split(":")[0].rsplit(".", 1)[1] for target in scripts.values()} == modules


def test_the_installed_scripts_are_the_declared_ones():
    installed = {ep.name: ep.value for ep in importlib.metadata.distribution("wikiart").entry_points
                 if ep.group == "console_scripts"}
    assert installed == declared_scripts(), "stale install: run .venv/bin/pip install --no-deps -e ."
