"""Command line of the media stages.

    python -m moir.media extract --manifest data/manifests/D/S.parquet --out-dir data/media/D/S \
        (--num-frames 8 | --fps 1 [--max-frames 64]) [--image-format jpeg] [--jpeg-quality 90] \
        [--max-bad-share 0.01] [--workers 1]
        writes frames.parquet, audio.parquet and errors.parquet into --out-dir; exits 1, naming the bad files,
        when more than --max-bad-share of the videos cannot be decoded (then only errors.parquet is written).

    python -m moir.media transcribe --audio data/media/D/S/audio.parquet --model openai/whisper-small \
        --out data/transcripts/D/S.parquet --cache-dir data/transcripts/cache [--revision REV] \
        [--language en] [--max-new-tokens N] [--batch-size 8] [--device cpu] [--dtype float32]
        writes the transcripts table; transcripts are cached per (settings, audio content) under --cache-dir.
"""

from __future__ import annotations

import argparse
import logging

from moir.settings import add_settings_argument, parse
from moir.media.extract import TooManyBadFiles, extract_media
from moir.media.frames import DEFAULT_MAX_SIDE, IMAGE_FORMATS, FrameSampling
from moir.media.transcripts import CHUNK_LENGTH_S, AsrSettings, transcribe
from moir.runtime import cli, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moir.media", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    stages = parser.add_subparsers(dest="stage", required=True)

    extract = stages.add_parser("extract", help="sample frames and audio of every video in a manifest")
    extract.add_argument("--manifest", required=True, help="manifest Parquet (moir.data.manifest)")
    extract.add_argument("--out-dir", required=True, help="directory for frames/audio/errors.parquet")
    sampling = extract.add_mutually_exclusive_group()  # one of them: here or in --settings
    sampling.add_argument("--num-frames", type=int, help="frames per video, uniformly spaced")
    sampling.add_argument("--fps", type=float, help="frames per second of video")
    extract.add_argument("--max-frames", type=int, help="with --fps: cap, falling back to uniform sampling")
    extract.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpeg")
    extract.add_argument("--jpeg-quality", type=int, default=90)
    extract.add_argument("--max-bad-share", type=float, default=0.01, help="allowed share of undecodable videos")
    extract.add_argument("--workers", type=int, default=1, help="decoding processes")
    extract.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                         help="frames are stored at most this many pixels on their longer side")
    add_settings_argument(extract)

    asr = stages.add_parser("transcribe", help="ASR transcripts of the audio table")
    asr.add_argument("--audio", required=True, help="audio.parquet from the extract stage")
    asr.add_argument("--model", required=True, help="transformers speech-recognition model: hub id or directory")
    asr.add_argument("--revision", help="hub revision (commit) of --model")
    asr.add_argument("--hub-lock", help="lock file of fetch_models: load --model offline from the shared cache "
                                        "(the transcript cache is then keyed by the locked snapshot)")
    asr.add_argument("--hub-name", help="--model's name in --hub-lock")
    asr.add_argument("--out", required=True, help="transcripts Parquet to write")
    asr.add_argument("--cache-dir", required=True, help="per-video transcript cache")
    asr.add_argument("--language", help="language token for multilingual models (Whisper), e.g. en")
    asr.add_argument("--max-new-tokens", type=int, help="token budget per 30 s window (default: the model's)")
    asr.add_argument("--chunk-length-s", type=float, default=CHUNK_LENGTH_S)
    asr.add_argument("--batch-size", type=int, default=8)
    asr.add_argument("--device", default="cpu")
    asr.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    add_settings_argument(asr)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    setup_logging("INFO")
    if args.stage == "extract":
        try:
            sampling = FrameSampling(num_frames=args.num_frames, fps=args.fps, max_frames=args.max_frames)
        except ValueError as error:
            parser.error(f"extract: {error} (--num-frames, --fps, --max-frames)")
        try:
            extract_media(
                args.manifest,
                args.out_dir,
                sampling,
                image_format=args.image_format,
                jpeg_quality=args.jpeg_quality,
                max_bad_share=args.max_bad_share,
                workers=args.workers,
                max_side=args.max_side,
            )
        except TooManyBadFiles as error:
            logging.getLogger("moir.media").error("%s", error)
            return 1
    else:
        from moir.models.fetch import locked_source  # imports the model stack: only the transcription needs it

        settings = AsrSettings(
            model=locked_source(args.model, args.revision, args.hub_lock, args.hub_name),
            revision=None if args.hub_lock else args.revision,
            language=args.language,
            max_new_tokens=args.max_new_tokens,
            chunk_length_s=args.chunk_length_s,
        )
        transcribe(
            args.audio,
            args.out,
            settings,
            cache_dir=args.cache_dir,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
        )
    return 0


if __name__ == "__main__":
    cli(main)
