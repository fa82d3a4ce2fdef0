"""`python -m moir.train.pretrain`: the demo bases, built from their configs and fully fine-tuned from pixels.

Proven here: the output is a save_pretrained directory that `load_vlm` loads like a hub model; every weight
was trained, the vision tower included; the loss falls; the same arguments give the same weights; video data
(with its frames table) and image data train one Qwen2.5-VL base together; bad --data fails before training.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from moir.models import load_vlm
from moir.train.pretrain import main as pretrain_main


@pytest.fixture(scope="module")
def data(tmp_path_factory, synth_images, synth_videos):
    root = tmp_path_factory.mktemp("pretrain")
    images = synth_images(root / "image", {"pretrain": 48}, seed=5)["pretrain"]
    videos, frames = synth_videos(root / "video", "pretrain", 4, seed=6)
    return {"root": root, "images": images, "videos": videos, "frames": frames}


def pretrain_args(data, name: str, out: str, *extra: str) -> list[str]:
    return ["--name", name, "--seed", "0", "--batch-size", "8", "--lr", "3e-3", "--out-dir", str(data["root"] / out),
            "--log-level", "WARNING", *extra]


def state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_pretrained_llava_loads_like_a_hub_model_and_learnt(data, tiny_dirs):
    args = pretrain_args(data, "tiny-llava", "llava", "--data", str(data["images"]), "--epochs", "3",
                         "--checkpoint-dir", str(data["root"] / "checkpoints"), "--checkpoint-every", "2")
    assert pretrain_main(args) == 0
    out = data["root"] / "llava"
    pretrained = load_vlm(out)
    initial = tiny_dirs["tiny-llava"]  # what pretraining starts from: the same architecture and seed
    before, after = state(load_vlm(initial).hf_model), state(pretrained.hf_model)
    assert before.keys() == after.keys()
    unchanged = {name for name in before if torch.equal(before[name], after[name])}
    # Every weight trained, the vision tower's included, except what LLaVA never reads: the features come from
    # the second-to-last CLIP layer (vision_feature_layer=-2), so the last layer and the final norm get no gradient.
    last = pretrained.hf_model.config.vision_config.num_hidden_layers - 1
    unused = {name for name in before if name.startswith((f"model.vision_tower.encoder.layers.{last}.",
                                                          "model.vision_tower.post_layernorm."))}
    assert len(unused) == 18 and unchanged == unused
    assert any(name.startswith("model.vision_tower.encoder.layers.0.") for name in before.keys() - unchanged)

    records = [json.loads(line) for line in (out / "pretrain_metrics.jsonl").read_text().splitlines()]
    losses = {epoch: [r["loss"] for r in records if r["kind"] == "step" and r["epoch"] == epoch] for epoch in (1, 3)}
    assert sum(losses[3]) / len(losses[3]) < sum(losses[1]) / len(losses[1]) - 0.5
    card = json.loads((out / "run_card.json").read_text())
    assert card["stage"] == "pretrain" and card["examples"] == 48 and card["optimizer_steps"] == 18
    # parameters counted once: the tied output matrix is the input embedding (state_dict lists it twice)
    assert card["family"] == "llava" and card["parameters"] == sum(p.numel() for p in pretrained.hf_model.parameters())
    assert not (data["root"] / "checkpoints").exists()


def test_same_arguments_give_the_same_weights(data):
    for out in ("again-1", "again-2"):
        assert pretrain_main(pretrain_args(data, "tiny-llava", out, "--data", str(data["images"]), "--epochs", "1",
                                           "--limit", "16")) == 0
    first, second = (state(load_vlm(data["root"] / out).hf_model) for out in ("again-1", "again-2"))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_the_learning_rate_follows_the_schedule(data):
    """--lr-schedule linear after one warm-up step, 2 epochs of 2 steps: each step's recorded rate is
    lr * lr_factor (0.5, then 1, 2/3, 1/3 of 3e-3)."""
    args = pretrain_args(data, "tiny-llava", "linear", "--data", str(data["images"]), "--epochs", "2",
                         "--limit", "16", "--lr-schedule", "linear", "--warmup-steps", "1")
    assert pretrain_main(args) == 0
    records = [json.loads(line) for line in (data["root"] / "linear" / "pretrain_metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "step"]
    assert lrs == pytest.approx([1.5e-3, 3e-3, 2e-3, 1e-3])
    card = json.loads((data["root"] / "linear" / "run_card.json").read_text())
    assert card["loop"]["lr_schedule"] == "linear" and card["loop"]["warmup_steps"] == 1


def test_qwen_pretrains_on_videos_and_images_together(data):
    args = pretrain_args(data, "tiny-qwen2.5-vl", "qwen", "--data", str(data["videos"]), str(data["frames"]),
                         "--data", str(data["images"]), "--limit", "12", "--epochs", "1")
    assert pretrain_main(args) == 0
    card = json.loads((data["root"] / "qwen" / "run_card.json").read_text())
    assert card["family"] == "qwen2_5_vl" and card["examples"] == 4 + 12
    assert set(card["inputs"]) == {str(data["videos"]), str(data["images"])}
    assert load_vlm(data["root"] / "qwen").family == "qwen2_5_vl"


@pytest.mark.parametrize(
    ("data_args", "expected"),
    [
        (lambda d: [str(d["images"]), str(d["frames"]), str(d["frames"])], "at most one frames table"),
        (lambda d: [str(d["root"] / "missing.parquet")], "file not found"),
        (lambda d: [str(d["videos"])], "frames table"),  # a video manifest without its frames
    ],
    ids=["three-paths", "missing-manifest", "video-without-frames"],
)
def test_bad_data_fails_before_training(data, caplog, data_args, expected):
    with caplog.at_level(logging.ERROR, logger="moir.train.pretrain"):
        assert pretrain_main(pretrain_args(data, "tiny-llava", "bad", "--data", *data_args(data))) == 1
    assert expected in caplog.records[-1].getMessage()
    assert not (data["root"] / "bad").exists()


def test_phases_pass_over_the_split_with_types_repeated_by_weight(data, monkeypatch):
    """--phases '1:colour=0@lr=...;1:colour=2,shape=0': the first pass leaves colour out at its own constant rate,
    the second lists each colour question twice and no shape question and warms up again. A run stopped in phase 2 resumes from the
    phases' checkpoints to the same weights as one that was not stopped."""
    import polars as pl

    from moir.train import pretrain as pretrain_module

    types = pl.read_parquet(data["images"])["category"].head(16).str.split(":").list.first().to_list()
    n_colour, n_shape = types.count("colour"), types.count("shape")
    assert n_colour and n_shape  # the fixture's 16 examples have both types
    phases = ["--phases", "1:colour=0@lr=1e-3,lr_schedule=constant,warmup_steps=0;1:colour=2,shape=0", "--limit", "16",
              "--lr-schedule", "linear", "--warmup-steps", "1"]
    assert pretrain_main(pretrain_args(data, "tiny-llava", "phased", "--data", str(data["images"]), *phases)) == 0
    out = data["root"] / "phased"
    card = json.loads((out / "run_card.json").read_text())
    passes = [16 - n_colour, 16 + n_colour - n_shape]
    assert card["examples_per_pass"] == passes
    assert card["phases"] == [{"epochs": 1, "question_weights": {"colour": 0.0}, "lr": 1e-3, "lr_schedule": "constant",
                               "warmup_steps": 0},
                              {"epochs": 1, "question_weights": {"colour": 2.0, "shape": 0.0}}]
    assert card["optimizer_steps"] == sum(-(-n // 8) for n in passes)
    records = [json.loads(line) for line in (out / "pretrain_metrics.jsonl").read_text().splitlines()]
    firsts = [next(r for r in records if r["kind"] == "step" and r["phase"] == k) for k in (0, 1)]
    # phase 1 sets its own constant 1e-3; phase 2 warms up to the stage's 3e-3 from its own start
    assert [r["lr"] for r in firsts] == pytest.approx([1e-3, 1.5e-3])

    real = pretrain_module.run_training
    calls = []

    def stop_in_phase_2(*args, **kwargs):
        calls.append(kwargs["description"])
        if "phase 2/2" in kwargs["description"] and calls.count(kwargs["description"]) == 1:
            raise KeyboardInterrupt("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "run_training", stop_in_phase_2)
    checkpoints = ["--checkpoint-dir", str(data["root"] / "phase-checkpoints")]
    with pytest.raises(KeyboardInterrupt):
        pretrain_main(pretrain_args(data, "tiny-llava", "resumed", "--data", str(data["images"]), *phases, *checkpoints))
    assert (data["root"] / "phase-checkpoints" / "phase-0").is_dir() and not (data["root"] / "resumed").exists()
    assert pretrain_main(pretrain_args(data, "tiny-llava", "resumed", "--data", str(data["images"]), *phases,
                                       *checkpoints)) == 0
    resumed = json.loads((data["root"] / "resumed" / "run_card.json").read_text())
    assert resumed["resumed_from_steps"] == [-(-passes[0] // 8)]  # phase 1 found finished, phase 2 ran from 0
    first, second = state(load_vlm(out).hf_model), state(load_vlm(data["root"] / "resumed").hf_model)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not (data["root"] / "phase-checkpoints").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--phases", "1:colour=0;1", "--epochs", "3"], "does not match --phases"),
        (["--phases", "1:color=0"], "that the pretraining data does not have"),
        (["--phases", "1:colour=0,shape=0,count=0,side=0,level=0"], "leave no pretraining example"),
    ],
    ids=["epochs-mismatch", "unknown-type", "nothing-left"],
)
def test_bad_phases_fail_before_writing(data, caplog, extra, expected):
    with caplog.at_level(logging.ERROR, logger="moir.train.pretrain"):
        assert pretrain_main(pretrain_args(data, "tiny-llava", "bad-phases", "--data", str(data["images"]),
                                           "--limit", "16", *extra)) == 1
    assert expected in caplog.records[-1].getMessage()
    assert not (data["root"] / "bad-phases").exists()
