"""Turning run directories into tables, figures, Markdown and Rich console output.

Reads files only (the run-directory contract of DESIGN.md); imports no training code.
"""

from .compare import compare
from .markdown import write_run_report
from .rundata import NotARunDir, ReportError, RunData, load_run

__all__ = ["NotARunDir", "ReportError", "RunData", "compare", "load_run", "write_run_report"]
