"""`python -m moir.train`: the command line of `moir.train.finetune`."""

from moir.runtime import cli
from moir.train.finetune import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    cli(main)
