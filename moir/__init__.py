"""MoIR: the Multi-modal Information Router and the pipeline that reproduces its paper.

One package per stage, in the order the data flows, each with its command line in `__main__`: `data` (manifests,
datasets, the synthetic benchmark), `media` (frames, audio, transcripts), `encoder_cache`, `train`, `evaluate`
and `report`. Beside them the shared libraries: `router` (the method), `models` (one wrapper per model family),
`dataset` and `prompts` (examples and their prompts), `metrics` (pure functions), `storage` (atomic writers) and
`runtime` (device, dtype, logging, versions, fingerprints, the command-line wrapper).
"""

__version__ = "0.1.0"
