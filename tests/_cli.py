"""Calling the real `clbench` entry point in-process, as a user's shell would."""

import sys

from clbench import cli


def main_exit(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `clbench ARGV...`."""
    monkeypatch.setattr(sys, "argv", ["clbench", *argv])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
