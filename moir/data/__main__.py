"""Data stages: generate the demo benchmark, download the paper's datasets, convert them to manifests.

Every command writes `<manifests>/<split>.parquet` (schema: moir/data/manifest.py) with media paths relative to
`--raw`, which is recorded in each manifest as its media root.

Generate the demo benchmark (seconds; sizes and hint accuracies come from config.yaml):
    python -m moir.data synth synth-image --raw data/raw/synth-image --manifests data/manifests/synth-image \\
        --seed 0 --pretrain 3000 --train 600 --val 150 --test 300 --image-size 48 \\
        --hint-accuracy 0.8 --eval-hint-accuracy 0.5 [--pretrain-hint-accuracy P] [--choice-share 0.5] [--fixed-choices]
    python -m moir.data synth synth-video --raw data/raw/synth-video --manifests data/manifests/synth-video \\
        --seed 0 --pretrain 400 --train 120 --val 40 --test 80 --frames 12 --frame-size 64 --fps 8 \\
        --sample-rate 16000 --silent-share 0.05 --tone-share 0.0 --hint-accuracy 0.8 --eval-hint-accuracy 0.5

Download (paper suite; pinned URLs and checksums in moir/data/download.py; output data/raw/<dataset>/download.complete.json):
    python -m moir.data download scienceqa --out data/raw/scienceqa
    python -m moir.data download vizwiz --out data/raw/vizwiz --allow-unpinned [--remove-archives]
    python -m moir.data download mmbench_video --out data/raw/mmbench_video [--retries 5] [--timeout 60]

Convert to manifests:
    python -m moir.data convert scienceqa --raw data/raw/scienceqa --manifests data/manifests/scienceqa [--source hf|official]
    python -m moir.data convert vizwiz --raw data/raw/vizwiz --manifests data/manifests/vizwiz
    python -m moir.data convert mmbench_video --raw data/raw/mmbench_video --manifests data/manifests/mmbench_video \\
        [--seed 0] [--val-fraction 0.1] [--test-fraction 0.3]
"""

from __future__ import annotations

import argparse

from moir.settings import add_settings_argument, parse
from moir.data import download, mmbench_video, scienceqa, synthetic, vizwiz
from moir.runtime import cli, setup_logging
from moir.train.curriculum import parse_weights


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {text}")
    return value


def _fraction_or_chance(text: str) -> float | str:
    return synthetic.CHANCE if text == synthetic.CHANCE else _fraction(text)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text}")
    return value


def _weights(text: str) -> dict[str, float]:
    """"shape=3,count=1.5" -> {"shape": 3.0, "count": 1.5} (moir.train.curriculum.parse_weights)."""
    try:
        return parse_weights(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_synth_common(parser: argparse.ArgumentParser, sizes: dict[str, int]) -> None:
    parser.add_argument("--raw", required=True, help="directory for the generated media (the manifests' media root)")
    parser.add_argument("--manifests", required=True, help="directory for <split>.parquet")
    parser.add_argument("--seed", type=int, default=0)
    for split, default in sizes.items():
        parser.add_argument(f"--{split}", type=_count, default=default, help=f"examples in the {split} split (default {default})")
    parser.add_argument("--hint-accuracy", type=_fraction, default=0.8, help="P(hint right) in pretrain and train")
    parser.add_argument("--eval-hint-accuracy", type=_fraction, default=0.5, help="P(hint right) in val and test")
    parser.add_argument("--pretrain-hint-accuracy", type=_fraction_or_chance, default=None,
                        help="override for pretrain: a fraction, or 'chance' (the hint names every candidate equally often)")
    parser.add_argument("--choice-share", type=_fraction, default=0.5, help="share of multiple-choice questions")
    parser.add_argument("--fixed-choices", action="store_true",
                        help="multiple choice lists every answer in a fixed order (default: 2-4 answers, shuffled)")
    parser.add_argument("--pretrain-question-weights", type=_weights, default=None, metavar="TYPE=W,...",
                        help="the pretrain split's question types in proportion to these weights (unnamed: 1)")
    add_settings_argument(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moir.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="generate the demo benchmark").add_subparsers(dest="dataset", required=True)
    image = synth.add_parser("synth-image", help="rendered shapes, colours, counts and positions")
    _add_synth_common(image, {"pretrain": 3000, "train": 600, "val": 150, "test": 300})
    image.add_argument("--image-size", type=int, default=48, help="image side in pixels")
    video = synth.add_parser("synth-video", help="moving shapes with colour changes and a tone")
    _add_synth_common(video, {"pretrain": 400, "train": 120, "val": 40, "test": 80})
    video.add_argument("--frames", type=int, default=12)
    video.add_argument("--frame-size", type=int, default=64, help="frame side in pixels, a multiple of 32")
    video.add_argument("--fps", type=int, default=8)
    video.add_argument("--sample-rate", type=int, default=16000)
    video.add_argument("--silent-share", type=_fraction, default=0.05, help="share of clips without an audio stream")
    video.add_argument("--tone-share", type=_fraction, default=0.0, help="share of questions about the tone (needs audio)")
    video.add_argument("--background", choices=synthetic.VIDEO_BACKGROUNDS, default="plain",
                       help="plain grey, or a gradient that shows where each patch is (moir.data.synthetic.video_background)")

    fetch = commands.add_parser("download", help="download a paper-suite dataset (pinned, verified, resumable)")
    fetch.add_argument("dataset", choices=sorted(download.REGISTRY))
    fetch.add_argument("--out", required=True, help="the dataset's raw directory, e.g. data/raw/<dataset>")
    fetch.add_argument("--allow-unpinned", action="store_true", help="also fetch files without a published checksum")
    fetch.add_argument("--retries", type=int, default=5)
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")
    fetch.add_argument("--remove-archives", action="store_true", help="delete zip/tar files once extracted")

    convert = commands.add_parser("convert", help="convert a downloaded dataset to manifests").add_subparsers(dest="dataset", required=True)
    for name, help_text in (("scienceqa", "ScienceQA (HF Parquet release or official layout)"),
                            ("vizwiz", "VizWiz VQA (official annotations and images)"),
                            ("mmbench_video", "MMBench-Video (TSV and video pickles)")):
        sub = convert.add_parser(name, help=help_text)
        sub.add_argument("--raw", required=True, help="the dataset's raw directory (the manifests' media root)")
        sub.add_argument("--manifests", required=True, help="directory for <split>.parquet")
        if name == "scienceqa":
            sub.add_argument("--source", choices=("hf", "official"), default="hf")
        if name == "mmbench_video":
            sub.add_argument("--seed", type=int, default=0, help="seed of the by-video split")
            sub.add_argument("--val-fraction", type=_fraction, default=0.1)
            sub.add_argument("--test-fraction", type=_fraction, default=0.3)
        add_settings_argument(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    setup_logging(args.log_level)
    if args.command == "synth":
        hints = synthetic.HintSettings(args.hint_accuracy, args.eval_hint_accuracy, args.pretrain_hint_accuracy,
                                       args.choice_share, args.fixed_choices)
        sizes = {split: getattr(args, split) for split in synthetic.SPLITS}
        if args.dataset == "synth-image":
            synthetic.generate_synth_image(args.raw, args.manifests, sizes, image_size=args.image_size, hints=hints,
                                           seed=args.seed, pretrain_question_weights=args.pretrain_question_weights)
        else:
            synthetic.generate_synth_video(
                args.raw, args.manifests, sizes, frames=args.frames, frame_size=args.frame_size, fps=args.fps,
                sample_rate=args.sample_rate, silent_share=args.silent_share, tone_share=args.tone_share,
                background=args.background, hints=hints, seed=args.seed, pretrain_question_weights=args.pretrain_question_weights,
            )
    elif args.command == "download":
        download.fetch(download.REGISTRY[args.dataset], args.out, allow_unpinned=args.allow_unpinned,
                       retries=args.retries, timeout=args.timeout, remove_archives=args.remove_archives)
    elif args.dataset == "scienceqa":
        scienceqa.convert(args.raw, args.manifests, source=args.source)
    elif args.dataset == "vizwiz":
        vizwiz.convert(args.raw, args.manifests)
    else:
        mmbench_video.convert(args.raw, args.manifests, seed=args.seed, val_fraction=args.val_fraction,
                              test_fraction=args.test_fraction)
    return 0


if __name__ == "__main__":
    cli(main)
