"""MoIR: the Multi-modal Information Router and the pipeline that reproduces its paper.

One package per stage and one module per shared concern (see docs/stages.md, "Code map"): `router` (the method),
`models` (one wrapper per model family), `data` (manifests, datasets, the synthetic benchmark), `media` (frames,
audio, transcripts), `encoder_cache` (the frozen vision encoder's output), `dataset` (examples), `train`,
`evaluate`, `metrics` (pure functions) and `report`.
"""

__version__ = "0.1.0"
