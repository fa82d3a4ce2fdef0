"""What the checksums of checkpoints and encoder-cache shards cost, measured in one run.

    python benchmarks/checksums.py            # tiny-llava training step; a 64-row shard of LLaVA-1.5-sized features
    python benchmarks/checksums.py --quick    # a 16-row shard

Checkpoints (moir.train.loop): every checkpoint is hashed once when it is written (sha256 into its sidecar) and
once when a run resumes from it. Timed here: one training step of tiny-llava with LoRA (r=16) and the router, as
`moir.train` runs it (`optimizer_step`, cached features, batch 8), against writing that run's checkpoint
(`_save_checkpoint`: torch.save, fsync, sha256, sidecar) and against hashing it alone. Ratio printed: hash time /
step time, per checkpoint (a checkpoint is taken every `checkpoint_every` steps, 200 by default, so the cost per
step is that ratio / 200).

Cache shards (moir.encoder_cache.cache): a shard is hashed once per process when it is first read. Timed here:
reading every row of a shard of LLaVA-1.5-sized features (576 x 1024, float16: 1.2 MB a row) through
`EncoderCache.get`, as training reads it, against `verify_shard` (sha256 of the file). Both read a file the page
cache already holds (the dump just wrote it), so the ratio is hashing against a memory copy, not against the disk;
the script also prints the hash of one batch's rows against the training step measured above.
Best of --repeats for every timing (on a shared machine the minimum is the least disturbed measurement).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from moir.data.synthetic import image_example
from moir.encoder_cache.cache import EncoderCache, dump_cache
from moir.models import EncodedMedia, Example
from moir.models.llava import LlavaWrapper
from moir.models.tiny import build_tiny_llava
from moir.prompts import SHORT_ANSWER_INSTRUCTION
from moir.router import RouterConfig
from moir.storage import file_sha256
from moir.train.loop import _save_checkpoint, optimizer_step, rng_states


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def checkpoint_cost(workdir: Path, repeats: int, batch_size: int = 8) -> float:
    """Prints the checkpoint timings; returns the training step time (s)."""
    model, processor = build_tiny_llava(seed=0)
    adapter = LlavaWrapper(model, processor, "tiny-llava")
    rng = np.random.default_rng(0)
    pixels = []
    for i in range(batch_size):
        image, question = image_example(rng, 48)
        pixels.append(Example(f"b{i}", f"{question.text}\n{SHORT_ANSWER_INSTRUCTION}", question.answer, "image",
                              pixels=image))
    examples = [Example(ex.id, ex.prompt, ex.answer, "image", media=media)
                for ex, media in zip(pixels, adapter.encode(pixels), strict=True)]
    adapter.apply_lora("attn", r=16, alpha=32, dropout=0.05)
    adapter.attach_router(RouterConfig())
    adapter.model.train()
    parameters = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=2e-4)
    step = best_time(lambda: optimizer_step(adapter, examples, batch_size, optimizer, parameters, 1.0,
                                            adapter.device), repeats)
    named = dict(adapter.model.named_parameters())
    payload = {
        "fingerprint": {"bench": True},
        "parameters": {name: p.detach().cpu() for name, p in named.items() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "rng": rng_states(),
        "state": {"global_step": 1},
    }
    directory = workdir / "checkpoints"
    save = best_time(lambda: _save_checkpoint(directory, payload), repeats)
    path = next(directory.glob("step-*.pt"))
    digest = best_time(lambda: file_sha256(path), repeats)
    size_mb = path.stat().st_size / 1e6
    print(f"checkpoint: tiny-llava LoRA+router, {size_mb:.2f} MB; training step {step * 1e3:.1f} ms, "
          f"checkpoint write {save * 1e3:.1f} ms, sha256 {digest * 1e3:.2f} ms")
    print(f"  sha256 / training step = {digest / step:.4f} per checkpoint "
          f"({digest / step / 200:.6f} per step at checkpoint_every 200); "
          f"sha256 / checkpoint write = {digest / save:.3f}")
    return step


def shard_cost(workdir: Path, rows: int, repeats: int, step: float, batch_size: int = 8) -> None:
    generator = torch.Generator().manual_seed(0)
    items = [(f"img/{i:04d}.png", "image") for i in range(rows)]

    def encode(batch):
        return [EncodedMedia(torch.randn(576, 1024, generator=generator), None, "image") for _ in batch]

    encoder = {"family": "bench"}
    dump_cache(workdir / "cache", items, encode, encoder=encoder, shard_size=rows, batch_size=8)

    cache = EncoderCache(workdir / "cache", encoder=encoder)
    shard = cache.verify_shard(0)  # checked once, as in training: the reads timed below are reads alone

    def read_all() -> None:
        for key, _ in items:
            cache.get(key)

    def verify() -> None:
        file_sha256(shard)

    read = best_time(read_all, repeats)
    digest = best_time(verify, repeats)
    size_mb = (workdir / "cache" / "shard-00000.parquet").stat().st_size / 1e6
    print(f"cache shard: {rows} rows of 576 x 1024 float16, {size_mb:.0f} MB; reading every row {read * 1e3:.0f} ms, "
          f"sha256 {digest * 1e3:.0f} ms ({size_mb / digest:.0f} MB/s)")
    print(f"  sha256 / reading the shard = {digest / read:.3f} (paid once per shard and process; the read is a "
          "memory-mapped copy from the page cache)")
    per_batch = digest * batch_size / rows
    print(f"  sha256 of one batch's rows ({batch_size} x 1.2 MB) / tiny-llava training step = {per_batch / step:.4f} "
          "(a LLaVA-1.5-7B step takes longer than the tiny model's, so the share is smaller there)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 16-row shard instead of 64")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        step = checkpoint_cost(Path(tmp), args.repeats)
        shard_cost(Path(tmp), 16 if args.quick else 64, args.repeats, step)


if __name__ == "__main__":
    main()
