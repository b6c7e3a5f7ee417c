"""Command-line programs built on the stages (make demo)."""
