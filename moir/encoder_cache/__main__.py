"""`python -m moir.encoder_cache`: the command line of `moir.encoder_cache.cache`."""

from moir.encoder_cache.cache import build_parser, main
from moir.runtime import cli

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    cli(main)
