"""`python -m moir.encoder_cache`: the command line of `moir.encoder_cache.cache`."""

from moir.encoder_cache.cache import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
