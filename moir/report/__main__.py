"""`python -m moir.report`: the command line of `moir.report.build`."""

from moir.report.build import build_parser, main, read_settings
from moir.runtime import cli

__all__ = ["build_parser", "main", "read_settings"]

if __name__ == "__main__":
    cli(main)
