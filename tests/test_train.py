"""`python -m moir.train` on the real tiny LLaVA and a generated synth-image split, read from the encoder cache.

What is proven here: a run writes its vlm (LoRA + router), metrics and run card, and the saved adapter
reproduces the run's final validation loss; a run killed with SIGKILL part-way and started again ends with
bit-for-bit the weights (and the same per-step losses) of an uninterrupted run; gradient accumulation gives the
objective of one large batch; a non-finite loss stops the run naming the step and keeps the last good
checkpoint; bad arguments, an empty split, a cache of another model and a checkpoint of another run fail before
training starts, leaving no output behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import struct
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moir.data.manifest import write_manifest
from moir.dataset import load_examples
from moir.models import build_tiny_model, load_vlm
from moir.encoder_cache.cache import dump_for_vlm
from moir.train.finetune import main as train_main
from moir.train.loop import (
    LoopConfig,
    count_targets,
    epoch_order,
    latest_checkpoint,
    lr_factor,
    validation_loss,
)

REPO = Path(__file__).resolve().parents[1]
TIMING_FIELDS = {"step_time_s", "tokens_per_s"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_dirs, synth_images) -> dict[str, Path]:
    """tiny-llava (seed 0) and a second one with other weights (seed 1); synth-image train 24 / val 8, cached."""
    root = tmp_path_factory.mktemp("train")
    manifests = synth_images(root, {"train": 24, "val": 8}, seed=3)
    base = tiny_dirs["tiny-llava"]
    vlm = load_vlm(base)
    paths = {"root": root, "base": base, "other_base": build_tiny_model("tiny-llava", root / "tiny-llava-1", seed=1)}
    for split, manifest in manifests.items():
        paths[f"{split}_manifest"] = manifest
        paths[f"{split}_cache"] = dump_for_vlm(manifest, root / "cache" / split, vlm, model=str(base)).parent
    return paths


def train_args(demo: dict[str, Path], name: str, *extra: str, model: Path | None = None) -> list[str]:
    return [
        "--model", str(model or demo["base"]),
        "--train-manifest", str(demo["train_manifest"]), "--train-cache", str(demo["train_cache"]),
        "--val-manifest", str(demo["val_manifest"]), "--val-cache", str(demo["val_cache"]),
        "--placement", "attn", "--method", "moir", "--epochs", "2", "--batch-size", "4", "--seed", "0",
        "--out-dir", str(demo["root"] / "runs" / name), "--checkpoint-dir", str(demo["root"] / "checkpoints" / name),
        "--log-level", "WARNING", *extra,
    ]


def saved_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}/{k}": v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


def metrics(directory: Path, drop: set[str] = TIMING_FIELDS) -> list[dict]:
    lines = (directory / "train_metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


@pytest.mark.parametrize("method", ["moir", "ft"])
def test_run_writes_adapter_metrics_and_card(demo, method):
    assert train_main(train_args(demo, method, "--method", method, "--checkpoint-every", "2")) == 0
    out = demo["root"] / "runs" / method
    card = json.loads((out / "run_card.json").read_text())
    records = metrics(out)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]

    assert [r["step"] for r in steps] == list(range(1, 13))  # 2 epochs x 24 / 4
    assert [r["epoch"] for r in epochs] == [1, 2] and all(math.isfinite(r["val_loss"]) for r in epochs)
    assert all(math.isfinite(r["loss"]) and r["lr"] == 2e-4 for r in steps)
    assert ("alpha_a_mean" in steps[0]) == (method == "moir")
    assert (out / "router.safetensors").exists() == (method == "moir")
    assert card["optimizer_steps"] == 12 and card["examples"] == {"train": 24, "val": 8}
    assert card["final_val_loss"] == epochs[-1]["val_loss"]
    if method == "moir":
        assert card["router"]["ratio"] == 0.1 and card["router"]["gate_init"] == 0.5
    else:
        assert card["router"] is None
    assert card["versions"]["torch"] == metadata.version("torch") and len(card["inputs"]["train_cache"]) == 64
    assert card["peak_rss_gib"] > 0 and card["train_time_s"] > 0
    assert not (demo["root"] / "checkpoints" / method).exists()  # removed once the outputs are written

    # The saved adapter is the trained one: loaded onto the base, it gives the run's final validation loss.
    vlm = load_vlm(demo["base"])
    vlm.load_trainable(out)
    val = load_examples(demo["val_manifest"], cache_dir=demo["val_cache"], vlm=vlm)
    loss = validation_loss(vlm, val, 4, torch.device("cpu"), None)
    assert loss == pytest.approx(card["final_val_loss"], rel=1e-5)


# 3 epochs of 2 steps at a high learning rate: the validation loss moves from epoch to epoch.
KEEP_ARGS = ("--epochs", "3", "--lr", "0.05", "--train-limit", "8")


@pytest.fixture(scope="module")
def kept_best(demo) -> tuple[Path, Path]:
    """A --keep best run (its checkpoints kept), and the same command run again: it resumes after the last epoch."""
    args = train_args(demo, "best", "--keep", "best", *KEEP_ARGS, "--keep-checkpoints")
    assert train_main(args) == 0
    first = demo["root"] / "runs" / "best-first"
    (demo["root"] / "runs" / "best").rename(first)
    assert train_main(args) == 0  # resumes at the end of epoch 3: nothing left to train
    return first, demo["root"] / "runs" / "best"


def test_keep_best_writes_the_weights_of_the_lowest_validation_loss(demo, kept_best):
    """Every run records its best-validation epoch; --keep best writes that epoch's weights: loading them gives
    exactly the best validation loss (whichever epoch it was)."""
    out = kept_best[0]
    card = json.loads((out / "run_card.json").read_text())
    losses = [r["val_loss"] for r in metrics(out) if r["kind"] == "epoch"]
    assert card["best_epoch"] == 1 + losses.index(min(losses)) and card["best_val_loss"] == min(losses)
    assert card["keep"] == "best" and card["kept_epoch"] == card["best_epoch"]
    vlm = load_vlm(demo["base"])
    vlm.load_trainable(out)
    val = load_examples(demo["val_manifest"], cache_dir=demo["val_cache"], vlm=vlm)
    assert validation_loss(vlm, val, 4, torch.device("cpu"), None) == pytest.approx(card["best_val_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="keep must be one of last, best"):
        LoopConfig(keep="first")


def test_keep_best_survives_a_resume_from_the_last_checkpoint(kept_best):
    """The best epoch's weights travel in the checkpoints: a run resumed after its last epoch writes them."""
    first, resumed = kept_best
    card = json.loads((resumed / "run_card.json").read_text())
    assert card["resumed_from_steps"] == [6] and card["kept_epoch"] == card["best_epoch"]
    expected, got = saved_tensors(first), saved_tensors(resumed)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_keep_last_is_the_default_and_still_records_the_best_epoch(demo):
    assert train_main(train_args(demo, "last", *KEEP_ARGS)) == 0
    card = json.loads((demo["root"] / "runs" / "last" / "run_card.json").read_text())
    losses = [r["val_loss"] for r in metrics(demo["root"] / "runs" / "last") if r["kind"] == "epoch"]
    assert card["keep"] == "last" and card["kept_epoch"] == 3
    assert card["best_epoch"] == 1 + losses.index(min(losses)) and card["final_val_loss"] == losses[-1]
    assert "keep" not in LoopConfig().fingerprint()  # runs that keep the last weights resume as before


def _run(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m moir.train` in a fresh process on one thread (the same arithmetic in every run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "moir.train", *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def test_killed_run_resumes_to_the_same_weights(demo):
    """SIGKILL a run after its 5th checkpoint (mid-epoch), start it again: same weights as a run never killed."""
    common = ("--epochs", "3", "--checkpoint-every", "1")
    logs = demo["root"] / "logs"
    logs.mkdir(exist_ok=True)
    reference = _run(train_args(demo, "whole", *common), logs / "whole.log")
    killed_args = train_args(demo, "killed", *common)
    checkpoints = demo["root"] / "checkpoints" / "killed"
    victim = _run(killed_args, logs / "victim.log")
    deadline = time.monotonic() + 60
    while victim.poll() is None and time.monotonic() < deadline:
        newest = latest_checkpoint(checkpoints)
        if newest is not None and int(newest.stem.split("-")[1]) >= 5:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (demo["root"] / "runs" / "killed").exists()
    killed_at = int(latest_checkpoint(checkpoints).stem.split("-")[1])
    assert 5 <= killed_at < 18

    resumed = _run(killed_args, logs / "resumed.log")
    assert resumed.wait() == 0, (logs / "resumed.log").read_text()
    assert reference.wait() == 0, (logs / "whole.log").read_text()

    whole, killed = demo["root"] / "runs" / "whole", demo["root"] / "runs" / "killed"
    expected, got = saved_tensors(whole), saved_tensors(killed)
    assert expected.keys() == got.keys() and len(expected) > 2
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert metrics(killed) == metrics(whole)  # every step's loss, lr, gradient norm and gate statistics
    card = json.loads((killed / "run_card.json").read_text())
    assert card["resumed_from_steps"] == [killed_at]


def test_gradient_accumulation_matches_one_large_batch(demo):
    base = ("--epochs", "1", "--lora-dropout", "0", "--train-limit", "8")
    assert train_main(train_args(demo, "accum-1", *base)) == 0
    assert train_main(train_args(demo, "accum-2", *base, "--grad-accum", "2")) == 0
    one, two = demo["root"] / "runs" / "accum-1", demo["root"] / "runs" / "accum-2"
    for a, b in zip(metrics(one), metrics(two), strict=True):
        if a["kind"] == "step":
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    expected, got = saved_tensors(one), saved_tensors(two)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(demo, caplog):
    # lr 1e30: the first update throws the LoRA weights to ~1e30, the next forward overflows.
    args = train_args(demo, "nan", "--lr", "1e30", "--checkpoint-every", "1")
    with caplog.at_level(logging.ERROR, logger="moir.train"):
        assert train_main(args) == 1
    message = caplog.records[-1].getMessage()
    assert "non-finite" in message and "at step 2 (epoch 1, batch 2 of 6)" in message
    checkpoint = latest_checkpoint(demo["root"] / "checkpoints" / "nan")
    assert checkpoint is not None and checkpoint.name == "step-00000001.pt" and str(checkpoint) in message
    assert not (demo["root"] / "runs" / "nan").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--grad-accum", "3"), "grad_accum must be a positive divisor of batch_size (4)"),
        (("--router", '{"ratio": 1.5}'), "ratio k' must lie in [0, 1]"),
        (("--lr", "-1"), "lr must be a positive finite number"),
        (("--epochs", "0"), "epochs must be a positive integer"),
        (("--lora-dropout", "1"), "lora_dropout must lie in [0, 1)"),
        (("--router", '{"gate_init": 0}'), "gate_init must lie strictly between 0 and 1"),
        (("--router", '{"ratios": 0.1}'), "--router: unknown field 'ratios'"),
        (("--val-cache", "/nonexistent/cache"), "val-cache: cache directory not found"),
    ],
)
def test_bad_arguments_fail_before_training(demo, caplog, extra, expected):
    with caplog.at_level(logging.ERROR, logger="moir.train"):
        assert train_main(train_args(demo, "bad", *extra)) == 1
    assert expected in caplog.records[-1].getMessage()
    assert not (demo["root"] / "runs" / "bad").exists() and not (demo["root"] / "checkpoints" / "bad").exists()


def test_empty_split_fails_before_training(demo, caplog):
    empty = write_manifest([], demo["root"] / "manifests" / "empty.parquet", media_root=demo["root"] / "raw")
    args = train_args(demo, "empty") + ["--train-manifest", str(empty)]
    with caplog.at_level(logging.ERROR, logger="moir.train"):
        assert train_main(args) == 1
    assert f"{empty}: the train split has no examples" in caplog.records[-1].getMessage()
    assert not (demo["root"] / "checkpoints" / "empty").exists()


def test_cache_of_another_model_fails_before_training(demo, caplog):
    with caplog.at_level(logging.ERROR, logger="moir.train"):
        assert train_main(train_args(demo, "mismatch", model=demo["other_base"])) == 1
    message = caplog.records[-1].getMessage()
    assert "vision_weights" in message and str(demo["train_cache"]) in message
    assert not (demo["root"] / "checkpoints" / "mismatch").exists()


# One optimizer step and a small validation: enough to leave a checkpoint behind.
ONE_STEP = ("--epochs", "1", "--train-limit", "4", "--val-limit", "4")


def test_checkpoint_of_another_run_is_refused(demo, caplog):
    assert train_main(train_args(demo, "first", *ONE_STEP, "--keep-checkpoints")) == 0
    assert latest_checkpoint(demo["root"] / "checkpoints" / "first") is not None
    args = train_args(demo, "first", *ONE_STEP, "--lr", "1e-3")
    with caplog.at_level(logging.ERROR, logger="moir.train"):
        assert train_main(args) == 1
    message = caplog.records[-1].getMessage()
    assert "belongs to a different run" in message and "loop" in message


def test_checkpoint_of_another_seed_names_the_field(demo, caplog):
    assert train_main(train_args(demo, "seeded", *ONE_STEP, "--keep-checkpoints")) == 0
    args = train_args(demo, "seeded", *ONE_STEP, "--seed", "1")
    with caplog.at_level(logging.ERROR, logger="moir.train"):
        assert train_main(args) == 1
    message = caplog.records[-1].getMessage()
    assert "loop.seed: checkpoint 0, this run 1" in message, message


def _flip_tensor_bytes(checkpoint: Path, n: int = 32) -> None:
    """XOR `n` bytes in the middle of the largest tensor record of a torch checkpoint (an uncompressed zip)."""
    import zipfile

    with zipfile.ZipFile(checkpoint) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(checkpoint.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
    data[start : start + n] = bytes(b ^ 0xA5 for b in data[start : start + n])
    checkpoint.write_bytes(bytes(data))


def test_a_corrupt_checkpoint_is_refused_naming_the_file(demo, caplog):
    assert train_main(train_args(demo, "flipped", *ONE_STEP, "--keep-checkpoints")) == 0
    checkpoint = latest_checkpoint(demo["root"] / "checkpoints" / "flipped")
    _flip_tensor_bytes(checkpoint)
    with caplog.at_level(logging.ERROR, logger="moir.train"):
        assert train_main(train_args(demo, "flipped", *ONE_STEP)) == 1
    message = caplog.records[-1].getMessage()
    assert f"{checkpoint}: corrupt checkpoint: sha256" in message, message


def test_loop_helpers():
    assert epoch_order(10, seed=0, epoch=1) == epoch_order(10, seed=0, epoch=1)
    assert epoch_order(10, seed=0, epoch=1) != epoch_order(10, seed=0, epoch=2)
    assert sorted(epoch_order(10, seed=3, epoch=0)) == list(range(10))
    labels = torch.tensor([[-100, -100, 5, 6], [7, -100, -100, 8]])
    assert count_targets(labels) == 3  # position 0 is never a target (labels shift by one)
    # The fingerprint holds every setting that changes the weights, and checkpoint_every (which does not) is out.
    # group_by_length, keep and the lr schedule join it only when not at their defaults, so that runs from before
    # the options keep their fingerprint.
    settings = {field.name for field in dataclasses.fields(LoopConfig)} - {
        "checkpoint_every", "group_by_length", "keep", "lr_schedule", "warmup_steps"}
    assert set(LoopConfig().fingerprint()) == settings
    assert set(LoopConfig(group_by_length=True).fingerprint()) == settings | {"group_by_length"}
    assert set(LoopConfig(lr_schedule="cosine").fingerprint()) == settings | {"lr_schedule", "warmup_steps"}
    assert LoopConfig(keep="best").fingerprint() == {**LoopConfig().fingerprint(), "keep": "best"}
    assert LoopConfig(checkpoint_every=1).fingerprint() == LoopConfig().fingerprint()
    assert LoopConfig(lr=1e-3).fingerprint() != LoopConfig().fingerprint()


def test_gate_lr_scale_moves_the_gates_only(demo):
    """One optimizer step (AdamW's first step moves each parameter by about lr): the gates move lr * scale, the LoRA
    weights exactly as at scale 1 (the step's gradients do not depend on the gates' learning rate)."""
    from moir.train.loop import parameter_groups

    weights = {}
    for scale in (1, 100):
        name = f"gate-lr-{scale}"
        assert train_main(train_args(demo, name, "--epochs", "1", "--train-limit", "4", "--val-limit", "4",
                                     "--router", json.dumps({"gate_lr_scale": scale}))) == 0
        weights[scale] = saved_tensors(demo["root"] / "runs" / name)
        card = json.loads((demo["root"] / "runs" / name / "run_card.json").read_text())
        assert card["router"]["gate_lr_scale"] == scale and card["optimizer_steps"] == 1
        assert metrics(demo["root"] / "runs" / name)[0]["lr"] == 2e-4  # the step records report LoRA's rate
    gates = [key for key in weights[1] if key.startswith("router.safetensors/")]
    assert len(gates) == 2
    for key in gates:
        assert weights[1][key].abs().max().item() == pytest.approx(2e-4, rel=1e-2)
        assert weights[100][key].abs().max().item() == pytest.approx(2e-2, rel=1e-2)
    for key in set(weights[1]) - set(gates):
        assert torch.equal(weights[1][key], weights[100][key])

    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    groups = parameter_groups({"lora": a, "router.logit_a": b, "router.logit_b": c}, 0.1,
                              {"router.logit_a": 10.0, "router.logit_b": 10.0})
    assert [(len(g["params"]), g["lr"]) for g in groups] == [(1, 0.1), (2, pytest.approx(1.0))]
    with pytest.raises(Exception, match="not trained"):
        parameter_groups({"lora": a}, 0.1, {"router.x": 2.0})


def test_lr_factor_warms_up_then_decays_as_computed_by_hand():
    # 10 steps, 2 of warm-up at 1/3 and 2/3; then t = (step - 2) / 8
    assert [lr_factor(step, 10, "cosine", 2) for step in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lr_factor(6, 10, "cosine", 2) == pytest.approx(0.5)  # t = 1/2: (1 + cos(pi / 2)) / 2
    assert lr_factor(4, 10, "cosine", 2) == pytest.approx((1 + math.sqrt(0.5)) / 2)  # t = 1/4
    assert lr_factor(9, 10, "cosine", 2) == pytest.approx((1 + math.cos(math.pi * 7 / 8)) / 2)
    assert [lr_factor(step, 10, "linear", 2) for step in (2, 6, 9)] == pytest.approx([1.0, 0.5, 0.125])
    assert [lr_factor(step, 4, "linear") for step in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert [lr_factor(step, 5, "constant", 1) for step in range(5)] == pytest.approx([0.5, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, linear, got 'step'"):
        lr_factor(0, 10, "step")
    with pytest.raises(ValueError, match=r"step must be in \[0, 10\), got 10"):
        lr_factor(10, 10, "cosine")


def test_lr_schedule_settings_are_checked_and_a_constant_run_keeps_its_fingerprint():
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, linear, got 'exp'"):
        LoopConfig(lr_schedule="exp")
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0, got -1"):
        LoopConfig(warmup_steps=-1)
    assert not {"lr_schedule", "warmup_steps"} & set(LoopConfig().fingerprint())
    assert LoopConfig(lr_schedule="cosine", warmup_steps=3).fingerprint()["lr_schedule"] == "cosine"
