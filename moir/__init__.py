"""MoIR: the Multi-modal Information Router and the pipeline that reproduces its paper.

One module per concern (see README.md, "Code map"): `router` (the method), `models` (one wrapper per model
family), `data` (manifests, datasets, the synthetic benchmark), `media` (frames, audio, transcripts), `tokens`
(the encoder cache), `train`, `evaluate`, `metrics` (pure functions) and `report`.
"""

__version__ = "0.1.0"
