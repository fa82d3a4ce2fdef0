"""`python -m moir.report`: the command line of `moir.report.build`."""

from moir.report.build import build_parser, main
from moir.runtime import cli

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    cli(main)
