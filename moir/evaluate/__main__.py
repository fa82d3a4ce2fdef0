"""`python -m moir.evaluate`: the command line of `moir.evaluate.evaluation`."""

from moir.evaluate.evaluation import build_parser, main
from moir.runtime import cli

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    cli(main)
