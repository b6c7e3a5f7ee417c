"""Every command's options: dataclasses with help and bounds, presets < YAML < flags. Imports nothing else of wikiart, no torch."""
