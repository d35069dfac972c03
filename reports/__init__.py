"""Turning run directories into tables, figures, Markdown and Rich console output.

Reads files only (the run-directory contract of DESIGN.md); imports no training code.
"""

from .markdown import write_run_report
from .rundata import RunData, load_run

__all__ = ["RunData", "load_run", "write_run_report"]
