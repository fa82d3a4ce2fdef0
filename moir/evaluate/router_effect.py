"""What the router of a MoIR run actually does at evaluation time: the run's model with the router on (as trained)
against the same model with the router switched off (`VLMWrapper.router_off`: the LoRA weights stay).

Per example (the clean evaluation's examples and the run's own answers):
- the total variation between the next-token distributions at the answer position (the position whose logits
  give the first answer token), router on vs off, from one teacher-forced pass over the model's own answer each;
- the greedy answer with the router off, compared with the router-on answer after normalisation (the parsed
  option letter, else the VQA-normalised text: `moir.evaluate.scoring.normalized_prediction`).
And per direction (a: into the visual tokens, b: into the text tokens): how often each channel is chosen by
Eq. 2 over the routed examples, and the gates' movement |alpha - gate_init| over the channels chosen at least once
(mean and max) and over all channels (max). `gate_init` is 0.5 in the paper and in every suite of config.yaml.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from moir.evaluate.scoring import normalized_prediction

log = logging.getLogger("moir.evaluate")


def answer_distributions(vlm, batch: dict) -> list[torch.Tensor | None]:
    """The next-token distribution (float32, on CPU) at each example's answer position of a teacher-forced batch;
    None for an example without answer tokens."""
    logits = vlm.forward(batch).logits
    answer_mask = batch["answer_mask"]
    out = []
    for row in range(answer_mask.shape[0]):
        positions = answer_mask[row].nonzero()
        if len(positions) == 0 or int(positions[0]) == 0:
            out.append(None)
            continue
        out.append(torch.softmax(logits[row, int(positions[0]) - 1].float(), dim=-1).cpu())
    return out


def total_variation(vlm, examples: list, answers: list[str]) -> list[float | None]:
    """TV(router on, router off) at the answer position of each example, teacher-forcing `answers`; an example the
    tokenizer cannot teacher-force in its batch is retried alone, and gets None if it fails alone."""
    forced = [dataclasses.replace(example, answer=text) for example, text in zip(examples, answers)]
    try:
        batch = vlm.collate(forced, with_answer=True)
        on = answer_distributions(vlm, batch)
        with vlm.router_off():
            off = answer_distributions(vlm, batch)
    except ValueError as error:
        if len(examples) == 1:
            log.warning("example %s: no router-effect measurement: %s", examples[0].id, error)
            return [None]
        return [value for i in range(len(examples))
                for value in total_variation(vlm, examples[i:i + 1], answers[i:i + 1])]
    return [None if p is None or q is None else 0.5 * float((p - q).abs().sum()) for p, q in zip(on, off)]


@torch.no_grad()
def measure(vlm, examples, answers: list[str], batch_size: int, max_new_tokens: int) -> dict:
    """Run the measurements (module docstring) over `examples` (with their router-on `answers`).

    Returns {"tv": [...], "prediction_off": [...], "chosen": {"a": (n, k) long tensor, ...}, "alpha": {"a": (D,)
    tensor, ...}, "gate_init": float}; the channels are recorded during the router-on passes, one per routed
    example."""
    router = vlm.router
    if router is None:
        raise ValueError("measure: the model has no router")
    tv: list[float | None] = []
    prediction_off: list[str] = []
    router.record_channels(True)
    try:
        for start in range(0, len(examples), batch_size):
            batch_examples = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
            tv += total_variation(vlm, batch_examples, answers[start:start + len(batch_examples)])
            with vlm.router_off():
                prediction_off += vlm.generate(vlm.collate(batch_examples, with_answer=False), max_new_tokens)
        k = round(router.config.ratio * router.dim)
        chosen = {name: torch.cat(parts) if parts else torch.zeros(0, k, dtype=torch.long)
                  for name, parts in router.chosen.items()}
    finally:
        router.record_channels(False)
    return {"tv": tv, "prediction_off": prediction_off, "chosen": chosen,
            "alpha": {"a": torch.sigmoid(router.logit_a.detach().float()).cpu(),
                      "b": torch.sigmoid(router.logit_b.detach().float()).cpu()},
            "gate_init": router.config.gate_init, "directions": router.config.directions}


def channel_summary(chosen: torch.Tensor, alpha: torch.Tensor, gate_init: float) -> dict:
    """How often each channel is chosen (counts over the routed examples), every channel's gate alpha, and the
    gates' movement |alpha - gate_init| over the channels chosen at least once, and over all channels."""
    counts = torch.bincount(chosen.reshape(-1), minlength=alpha.shape[0]) if chosen.numel() else \
        torch.zeros(alpha.shape[0], dtype=torch.long)
    shift = (alpha - gate_init).abs()
    selected = counts > 0
    return {
        "n_routed": int(chosen.shape[0]),
        "n_channels_selected": int(selected.sum()),
        "alpha_shift_selected_mean": float(shift[selected].mean()) if selected.any() else None,
        "alpha_shift_selected_max": float(shift[selected].max()) if selected.any() else None,
        "alpha_shift_max": float(shift.max()),
        "selection_counts": counts.tolist(),
        "alpha": alpha.tolist(),
    }


def router_effect_metrics(effect: dict, rows: list[dict], answers: list[str]) -> dict:
    """The metrics.json section of `measure`'s result: TV (mean, max), the share of changed predictions (percent,
    normalised), and `channel_summary` per routed direction."""
    tv = [value for value in effect["tv"] if value is not None]
    changed = [normalized_prediction(row, on) != normalized_prediction(row, off)
               for row, on, off in zip(rows, answers, effect["prediction_off"])]
    directions = {"a": "into the visual tokens", "b": "into the text tokens"}
    routed = {"both": ("a", "b"), "a": ("a",), "b": ("b",)}[effect["directions"]]
    return {
        "definition": "the run's model with the router on vs off (LoRA kept): total variation between the "
                      "answer-position next-token distributions (teacher-forced on the router-on answer); percent "
                      "of normalised greedy predictions that change; per direction, Eq. 2's channel choices over "
                      "the routed examples and |alpha - gate_init| over the channels chosen at least once",
        "n": len(rows),
        "tv_mean": sum(tv) / len(tv) if tv else None,
        "tv_max": max(tv) if tv else None,
        "n_tv": len(tv),
        "changed_share": 100.0 * sum(changed) / len(changed) if changed else None,
        "gate_init": effect["gate_init"],
        "directions": {name: {"what": directions[name],
                              **channel_summary(effect["chosen"][name], effect["alpha"][name], effect["gate_init"])}
                       for name in routed},
    }
