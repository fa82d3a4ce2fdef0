"""Video media for the pipeline: sampled frames, audio tracks and their ASR transcripts, decoded once.

Stages (CLI in `moir.media.__main__`):
- `extract` (moir.media.extract): every video of a manifest -> frames.parquet (moir.media.frames),
  audio.parquet (moir.media.audio) and errors.parquet, in data/media/<dataset>/<split>/.
- `transcribe` (moir.media.transcripts): audio.parquet -> data/transcripts/<dataset>/<split>.parquet.

All tables are keyed by the manifest's `media_path`, so several questions about one video share its frames,
audio and transcript; `moir.dataset` joins them back onto manifest rows.
"""
