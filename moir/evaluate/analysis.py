"""The clean evaluation's analysis: one teacher-forced forward pass over the model's own answer that records the
attention mass from the positions that produce the answer (the batch's `query_mask`: the last prompt token through
the last answer token before the end-of-turn token, the queries a generation loop feeds) to the prompt's text
tokens T and visual tokens O per decoder layer (heads averaged; `moir.evaluate.attention`), and the effective rank
of the visual and the text token states of each example at two places: the output of a decoder layer (before the
decoder's final norm; by default the last layer) and the language model's input embeddings (the router's output,
where MoIR acts); then their summaries over the examples (MDI/AEI per layer range, mean ranks and deltas to the
base at the same layer)."""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from typing import Any

import torch

from moir.evaluate import EvaluationError
from moir.evaluate.attention import record_group_attention, record_layer_output
from moir.evaluate.store import ANALYSIS_FIELDS, METRICS_FILE
from moir.metrics import effective_rank, layer_groups, modality_dominance
from moir.models import Example

log = logging.getLogger("moir.evaluate")

def analyse_batch(vlm, examples: list[Example], predictions: list[str], hidden_index: int) -> list[dict]:
    """Attention mass per layer (answer-producing positions -> T and O) and effective ranks (at the output of
    decoder layer `hidden_index - 1` and at the input embeddings), teacher-forcing the predictions."""
    forced = [dataclasses.replace(example, answer=text) for example, text in zip(examples, predictions)]
    batch = vlm.collate(forced, with_answer=True)
    groups = {"text": batch["text_mask"], "visual": batch["visual_mask"]}
    layer = max(hidden_index - 1, 0)
    with torch.no_grad(), record_group_attention(vlm.hf_model, batch["query_mask"], groups) as record, \
            record_layer_output(vlm.hf_model, layer) as layer_output:
        output = vlm.forward(batch, output_hidden_states=True)
    inputs = output.hidden_states[0]  # the decoder's input: the input embeddings, after the router
    states = inputs if hidden_index == 0 else layer_output["output"]
    results = []
    for row in range(len(examples)):
        text_mask, visual_mask = batch["text_mask"][row], batch["visual_mask"][row]
        n_text, n_visual = int(text_mask.sum()), int(visual_mask.sum())
        n_query = int(batch["query_mask"][row].sum())

        def rank(hidden, mask, present):
            return effective_rank(hidden[row][mask.to(hidden.device)]) if present else None

        mass = record.mass[row]
        results.append({
            "n_text": n_text,
            "n_visual": n_visual,
            "n_answer": n_query,  # query positions (answer-producing), the rows the masses average over
            "attn_text": mass[:, 0].tolist() if n_query else None,
            "attn_visual": mass[:, 1].tolist() if n_query else None,
            "erank_text": rank(states, text_mask, n_text),
            "erank_visual": rank(states, visual_mask, n_visual),
            "erank_text_input": rank(inputs, text_mask, n_text),
            "erank_visual_input": rank(inputs, visual_mask, n_visual),
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
    """MDI and AEI over all layers and the early/middle/late thirds: per example, the per-layer masses (heads and
    query positions averaged) averaged over the range's layers, then MDI/AEI of those masses; mean (and median)
    over the examples with both groups and a query."""
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
        "queries": "the positions that produce the model's own greedy answer, teacher-forced: the last prompt token "
                   "through the last answer token before the end-of-turn token (what a generation loop feeds)",
        "groups": {"T": "the prompt's text tokens (adapter text_mask)", "O": "visual/video tokens (visual_mask)"},
        "heads": "averaged",
        "aggregation": "per example and layer: attention mass on T and on O, averaged over heads and query "
                       "positions; per example: the masses averaged over the range's layers, then MDI/AEI of "
                       "them; mean and median over examples",
        "layers": groups,
        "mdi": mdi,
        "aei": aei,
    }

RANK_SITE = "decoder layer output, before the final norm"

def rank_metrics(raw: list[dict], ids: list[str], hidden_index: int, n_hidden: int, base: dict | None) -> dict:
    """Mean effective rank of the visual and text token states at the rank layer (the output of decoder layer
    hidden_index - 1, before the final norm; index 0: the input embeddings) and at the input embeddings (the
    router's output); deltas against the base evaluation (`base`, from `read_evaluation`) at the same places, on
    the examples both have."""
    def mean_of(values: dict[str, float | None]) -> dict:
        present = [v for v in values.values() if v is not None]
        return {"mean": statistics.fmean(present) if present else None, "n": len(present)}

    def deltas(suffix: str, base_rows: dict) -> dict:
        out = {}
        for kind in ("visual", "text"):
            column = f"erank_{kind}{suffix}"
            pairs = [(r[column], base_rows[i][column]) for i, r in zip(ids, raw)
                     if r[column] is not None and i in base_rows and base_rows[i].get(column) is not None]
            out[kind] = {"mean": statistics.fmean(a - b for a, b in pairs) if pairs else None,
                         "base_mean": statistics.fmean(b for _, b in pairs) if pairs else None, "n": len(pairs)}
        return out

    layer = "the input embeddings (hidden_states[0])" if hidden_index == 0 else (
        f"the output of decoder layer {hidden_index - 1} (0-based) of {n_hidden - 1}, before the final norm")
    result: dict[str, Any] = {
        "hidden_state_index": hidden_index,
        "n_hidden_states": n_hidden,
        "site": RANK_SITE,
        "layer": layer,
        "definition": "Roy & Vetterli exp(H(sigma/sum sigma)) of each example's (tokens x D) token states, "
                      "uncentered; averaged over examples",
        "visual": mean_of({i: r["erank_visual"] for i, r in zip(ids, raw)}),
        "text": mean_of({i: r["erank_text"] for i, r in zip(ids, raw)}),
        "delta": None,
        "input_embeddings": {
            "layer": "the language model's input embeddings: the router's output (MoIR acts here), the text "
                     "embeddings and the projected visual tokens",
            "visual": mean_of({i: r["erank_visual_input"] for i, r in zip(ids, raw)}),
            "text": mean_of({i: r["erank_text_input"] for i, r in zip(ids, raw)}),
            "delta": None,
        },
    }
    if base is None:
        return result
    base_rank = base["metrics"]["effective_rank"]
    where = base["directory"] / METRICS_FILE
    if base_rank.get("site") != RANK_SITE:
        raise EvaluationError(f"{where}: field 'effective_rank.site' is {base_rank.get('site')!r}, this evaluation "
                              f"measures at {RANK_SITE!r}: rerun the base evaluation")
    if base_rank["hidden_state_index"] != hidden_index or base_rank["n_hidden_states"] != n_hidden:
        raise EvaluationError(
            f"{where}: field 'effective_rank.hidden_state_index' is "
            f"{base_rank['hidden_state_index']} of {base_rank['n_hidden_states']}, this evaluation uses "
            f"{hidden_index} of {n_hidden}")
    base_rows = {row["id"]: row for row in base["predictions"]}
    result["delta"] = {"base_evaluation": str(base["directory"]), **deltas("", base_rows)}
    result["input_embeddings"]["delta"] = {"base_evaluation": str(base["directory"]), **deltas("_input", base_rows)}
    return result
