"""The command line: `mesh-llm` and its subcommands."""

from .main import main

__all__ = ["main"]
