"""Whether two fetched models share their vision tower, decided from the weights: the workflow's vision_tower_check.

LLaVA-1.5 7B and 13B are both described as using CLIP ViT-L/14-336, but only byte-identical tower weights make
the 7B's encoder cache valid for the 13B. This stage compares every vision-tower tensor of two locked snapshots
(moir.models.fetch.compare_vision_towers; CPU, offline) and writes the comparison. The dump of the second
model's encoder cache reads it: `shared: true` links the first model's cache, otherwise it dumps its own
(moir.encoder_cache dump --reuse ... --tower-check ...).

    python -m moir.models.towers --lock data/models/llava-1.5-13b.lock.json --name llava-1.5-13b \
        --reference-lock data/models/llava-1.5-7b.lock.json --reference llava-1.5-7b \
        --out data/models/llava-1.5-13b.vision_tower.json
"""

from __future__ import annotations

import argparse
import logging

from moir.models.fetch import compare_vision_towers
from moir.runtime import cli, setup_logging
from moir.settings import add_settings_argument, parse
from moir.storage import write_json_atomic

log = logging.getLogger("moir.models.towers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moir.models.towers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", required=True, help="lock file of the model to check (fetch_models)")
    parser.add_argument("--name", required=True, help="its name in that lock")
    parser.add_argument("--reference-lock", required=True, help="lock file of the model whose cache it would reuse")
    parser.add_argument("--reference", required=True, help="that model's name in its lock")
    parser.add_argument("--out", required=True, help="the comparison (JSON) to write")
    add_settings_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    setup_logging("INFO")
    result = compare_vision_towers(args.reference_lock, args.reference, args.name, second_lock=args.lock)
    log.info("%s vs %s: vision tower %s (%d tensors)", args.name, args.reference,
             "identical" if result["shared"] else "differs", result["n_tensors"])
    write_json_atomic(result, args.out)
    return 0


if __name__ == "__main__":
    cli(main)
