"""Datasets as manifests: everything between the outside world (or the synthetic generator) and the media stages.

- `manifest`: the one manifest schema every dataset is converted to (read, write, resolve media paths).
- `synthetic`: the demo suite's benchmark (synth-image, synth-video) and its fixed `VOCABULARY`.
- `download`: pinned, checksummed, resumable downloads and safe archive extraction for the paper suite.
- `scienceqa`, `vizwiz`, `mmbench_video`: converters from each dataset's released format to manifests.
- `safe_pickle`: a restricted unpickler for MMBench-Video's video pickles.

The CLI (`python -m moir.data synth|download|convert ...`) is documented in `moir/data/__main__.py`.
"""

from moir.data.manifest import ManifestError, read_manifest, resolve_media, write_manifest

__all__ = ["ManifestError", "read_manifest", "resolve_media", "write_manifest"]
