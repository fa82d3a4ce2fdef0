"""The clean evaluation's analysis: one teacher-forced forward pass over the model's own answer that records the
attention mass from the answer tokens to the prompt's text tokens T and visual tokens O per decoder layer (heads
averaged; `moir.evaluate.attention`) and the effective rank of the visual and the text hidden states of each
example; then their summaries over the examples (MDI/AEI per layer range, mean ranks and deltas to the base)."""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from typing import Any

import torch

from moir.evaluate import EvaluationError
from moir.evaluate.attention import record_group_attention
from moir.evaluate.store import ANALYSIS_FIELDS, METRICS_FILE
from moir.metrics import effective_rank, layer_groups, modality_dominance
from moir.models import Example

log = logging.getLogger("moir.evaluate")

def analyse_batch(vlm, examples: list[Example], predictions: list[str], hidden_index: int) -> list[dict]:
    """Attention mass per layer (answer tokens -> T and O) and effective ranks, teacher-forcing the predictions."""
    forced = [dataclasses.replace(example, answer=text) for example, text in zip(examples, predictions)]
    batch = vlm.collate(forced, with_answer=True)
    groups = {"text": batch["text_mask"], "visual": batch["visual_mask"]}
    with torch.no_grad(), record_group_attention(vlm.hf_model, batch["answer_mask"], groups) as record:
        output = vlm.forward(batch, output_hidden_states=True)
    hidden = output.hidden_states[hidden_index]
    results = []
    for row in range(len(examples)):
        n_text, n_visual = int(batch["text_mask"][row].sum()), int(batch["visual_mask"][row].sum())
        n_answer = int(batch["answer_mask"][row].sum())
        text_tokens = hidden[row][batch["text_mask"][row].to(hidden.device)]
        visual_tokens = hidden[row][batch["visual_mask"][row].to(hidden.device)]
        mass = record.mass[row]
        results.append({
            "n_text": n_text,
            "n_visual": n_visual,
            "n_answer": n_answer,
            "attn_text": mass[:, 0].tolist() if n_answer else None,
            "attn_visual": mass[:, 1].tolist() if n_answer else None,
            "erank_text": effective_rank(text_tokens) if n_text else None,
            "erank_visual": effective_rank(visual_tokens) if n_visual else None,
        })
    return results

def analyse(vlm, examples: list[Example], predictions: list[str], hidden_index: int) -> list[dict]:
    """`analyse_batch`, one example at a time for a batch the tokenizer cannot teacher-force as a whole."""
    try:
        return analyse_batch(vlm, examples, predictions, hidden_index)
    except ValueError as error:
        if len(examples) == 1:
            log.warning("example %s: no attention/rank analysis: %s", examples[0].id, error)
            return [dict.fromkeys(ANALYSIS_FIELDS)]
        return [result for i in range(len(examples))
                for result in analyse(vlm, examples[i:i + 1], predictions[i:i + 1], hidden_index)]

def dominance_metrics(raw: list[dict]) -> dict:
    """MDI and AEI over all layers and the early/middle/late thirds: per example, the per-layer masses averaged
    over the range's layers, then MDI/AEI; mean (and median) over the examples with both groups and an answer."""
    usable = [r for r in raw if r["attn_text"] is not None and r["n_text"] and r["n_visual"]
              and not any(math.isnan(v) for v in r["attn_text"] + r["attn_visual"])]
    if not usable:
        return {"n": 0, "note": "no example with text tokens, visual tokens and answer tokens"}
    groups = layer_groups(len(usable[0]["attn_text"]))
    mdi, aei = {}, {}
    for name, layers in groups.items():
        if not layers:
            mdi[name] = aei[name] = None
            continue
        values = []
        for r in usable:
            a_text = sum(r["attn_text"][layer] for layer in layers) / len(layers)
            a_visual = sum(r["attn_visual"][layer] for layer in layers) / len(layers)
            if a_text + a_visual > 0:
                values.append(modality_dominance(a_text, r["n_text"], a_visual, r["n_visual"]))
        finite = [v for v in values if math.isfinite(v[0])]
        mdi[name] = {"mean": statistics.fmean(v[0] for v in finite) if finite else None,
                     "median": statistics.median(v[0] for v in finite) if finite else None,
                     "n": len(finite), "n_infinite": len(values) - len(finite)}
        aei[name] = {"mean": statistics.fmean(v[1] for v in values) if values else None,
                     "median": statistics.median(v[1] for v in values) if values else None, "n": len(values)}
    return {
        "n": len(usable),
        "answer_tokens": "the model's own greedy answer, teacher-forced (its tokens and the end-of-turn token)",
        "groups": {"T": "the prompt's text tokens (adapter text_mask)", "O": "visual/video tokens (visual_mask)"},
        "heads": "averaged",
        "aggregation": "per example: attention mass averaged over answer tokens, then over the range's layers; "
                       "MDI/AEI per example; mean and median over examples",
        "layers": groups,
        "mdi": mdi,
        "aei": aei,
    }

def rank_metrics(raw: list[dict], ids: list[str], hidden_index: int, n_hidden: int, base: dict | None) -> dict:
    """Mean effective rank of the visual and text hidden states; deltas against the base evaluation (`base`, from
    `read_evaluation`) on the examples both have."""
    def mean_of(values: dict[str, float | None]) -> dict:
        present = [v for v in values.values() if v is not None]
        return {"mean": statistics.fmean(present) if present else None, "n": len(present)}

    ours = {kind: {i: r[f"erank_{kind}"] for i, r in zip(ids, raw)} for kind in ("visual", "text")}
    result: dict[str, Any] = {
        "hidden_state_index": hidden_index,
        "n_hidden_states": n_hidden,
        "layer": "hidden_states[0] is the embedding output, hidden_states[-1] the last decoder layer's",
        "definition": "Roy & Vetterli exp(H(sigma/sum sigma)) of each example's (tokens x D) hidden states, "
                      "uncentered; averaged over examples",
        "visual": mean_of(ours["visual"]),
        "text": mean_of(ours["text"]),
        "delta": None,
    }
    if base is None:
        return result
    base_rank = base["metrics"]["effective_rank"]
    if base_rank["hidden_state_index"] != hidden_index or base_rank["n_hidden_states"] != n_hidden:
        raise EvaluationError(
            f"{base['directory'] / METRICS_FILE}: field 'effective_rank.hidden_state_index' is "
            f"{base_rank['hidden_state_index']} of {base_rank['n_hidden_states']}, this evaluation uses "
            f"{hidden_index} of {n_hidden}")
    base_rows = {row["id"]: row for row in base["predictions"]}
    delta = {"base_evaluation": str(base["directory"])}
    for kind in ("visual", "text"):
        pairs = [(value, base_rows[i][f"erank_{kind}"]) for i, value in ours[kind].items()
                 if value is not None and i in base_rows and base_rows[i][f"erank_{kind}"] is not None]
        delta[kind] = {"mean": statistics.fmean(a - b for a, b in pairs) if pairs else None,
                       "base_mean": statistics.fmean(b for _, b in pairs) if pairs else None, "n": len(pairs)}
    result["delta"] = delta
    return result
