"""The SDPA attention hook against eager attention maps on the tiny models: the per-group masses must agree."""

import numpy as np
import PIL.Image
import pytest
import torch

from moir.evaluate.attention import decoder_attention_modules, record_group_attention
from moir.models import Example, load_vlm
from moir.router import RouterConfig


@pytest.fixture(scope="module")
def vlms(tiny_dirs):
    return {name: load_vlm(directory) for name, directory in tiny_dirs.items()}


def _examples(family: str) -> list[Example]:
    rng = np.random.default_rng(0)

    def image(size):
        return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))

    examples = [
        Example("a", "What colour is the shape?", "red", "image", pixels=image(32)),
        Example("b", "Is the circle on the left?\nAnswer the question using a single word or phrase.", "yes no",
                "image", pixels=image(32)),
        Example("c", "Is the sky blue?", "yes", "none"),
    ]
    if family == "tiny-qwen2.5-vl":
        frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
        examples.append(Example("d", "Which way does it move?", "up", "video", pixels=frames, fps=2.0))
    return examples


def _eager_masses(vlm, batch) -> torch.Tensor:
    """The same quantity from the attention maps that eager attention returns (B, layers, 2)."""
    model = vlm.hf_model
    maps = []
    hooks = [module.register_forward_hook(lambda m, args, out: maps.append(out[1].float()))
             for module in decoder_attention_modules(model)]
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            vlm.forward(batch)
    finally:
        model.set_attn_implementation("sdpa")
        for hook in hooks:
            hook.remove()
    masses = torch.zeros(batch["input_ids"].shape[0], len(maps), 2)
    for layer, weights in enumerate(maps):
        weights = weights.mean(dim=1)  # heads averaged: (B, L, L)
        for row in range(weights.shape[0]):
            answer_rows = weights[row, batch["answer_mask"][row]]
            masses[row, layer, 0] = answer_rows[:, batch["text_mask"][row]].sum(-1).mean()
            masses[row, layer, 1] = answer_rows[:, batch["visual_mask"][row]].sum(-1).mean()
    return masses


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded-batch", "single-example"])
def test_hook_equals_eager_attention(vlms, name, padded):
    vlm = vlms[name]
    examples = _examples(name) if padded else _examples(name)[:1]  # one example: SDPA runs without a mask
    batch = vlm.collate(examples, with_answer=True)
    groups = {"text": batch["text_mask"], "visual": batch["visual_mask"]}
    with torch.no_grad(), record_group_attention(vlm.hf_model, batch["answer_mask"], groups) as record:
        hooked = vlm.forward(batch)
    with torch.no_grad():
        plain = vlm.forward(batch)
    torch.testing.assert_close(hooked.logits, plain.logits, rtol=0, atol=0)  # the hook leaves the output alone
    assert record.group_names == ["text", "visual"]
    assert record.mass.shape == (len(examples), len(decoder_attention_modules(vlm.hf_model)), 2)
    torch.testing.assert_close(record.mass, _eager_masses(vlm, batch), rtol=1e-5, atol=1e-6)
    assert (record.mass[:, :, 0] > 0).all()
    if padded:
        assert (record.mass[2, :, 1] == 0).all()  # the text-only example has no visual tokens


def test_hook_sees_through_lora_and_router(tiny_dirs):
    vlm = load_vlm(tiny_dirs["tiny-llava"])
    vlm.apply_lora("attn")
    vlm.attach_router(RouterConfig())
    batch = vlm.collate(_examples("tiny-llava")[:2], with_answer=True)
    groups = {"text": batch["text_mask"], "visual": batch["visual_mask"]}
    with torch.no_grad(), record_group_attention(vlm.model, batch["answer_mask"], groups) as record:
        vlm.forward(batch)
    torch.testing.assert_close(record.mass, _eager_masses(vlm, batch), rtol=1e-5, atol=1e-6)


def test_hook_refuses_eager_models_and_nesting(vlms):
    vlm = vlms["tiny-llava"]
    batch = vlm.collate(_examples("tiny-llava")[:1], with_answer=True)
    groups = {"text": batch["text_mask"]}
    vlm.hf_model.set_attn_implementation("eager")
    try:
        with pytest.raises(ValueError, match="needs the decoder on 'sdpa'"):
            with record_group_attention(vlm.hf_model, batch["answer_mask"], groups):
                pass
    finally:
        vlm.hf_model.set_attn_implementation("sdpa")
    with record_group_attention(vlm.hf_model, batch["answer_mask"], groups):
        with pytest.raises(RuntimeError, match="nested"):
            with record_group_attention(vlm.hf_model, batch["answer_mask"], groups):
                pass
        with torch.no_grad():
            vlm.forward(batch)


# ---------------------------------------------------------------------------------------------- MDI's queries


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_queries_are_the_positions_that_produce_the_answer(vlms, name):
    """query_mask: the last prompt token through the last answer token before the end of turn, i.e. each answer
    token (end of turn included) shifted one position back."""
    vlm = vlms[name]
    batch = vlm.collate(_examples(name), with_answer=True)
    special = set(vlm.tokenizer.all_special_ids)
    for row in range(batch["input_ids"].shape[0]):
        answer = batch["answer_mask"][row].nonzero().flatten()
        query = batch["query_mask"][row].nonzero().flatten()
        torch.testing.assert_close(query, answer - 1)
        assert int(batch["input_ids"][row, answer[-1]]) in special  # the end of turn is produced, never fed
        assert not batch["answer_mask"][row, query[0]]  # the first query is the last prompt token
    # a one-token answer (one token before the end of turn): the last prompt token and that token are the queries
    for word in ("yes", "no", "red", "a", "1", "A"):
        batch = vlm.collate([Example("e", "Is it?", word, "none")], with_answer=True)
        answer = batch["answer_mask"][0].nonzero().flatten().tolist()
        produced = [p for p in answer if int(batch["input_ids"][0, p]) not in special]
        if len(produced) == 1:
            break
    else:
        pytest.fail("no one-token answer among the candidates")
    assert batch["query_mask"][0].nonzero().flatten().tolist() == [answer[0] - 1, answer[0]]


def test_hand_built_attention_pattern_gives_the_hand_computed_mdi():
    """One layer, one head, keys of scores [log 3, 0, 0, 0]: query 2 sees keys 0-2 -> (3/5, 1/5, 1/5), query 3
    sees keys 0-3 -> (1/2, 1/6, 1/6, 1/6). T = {0}, O = {1, 2}: A_T = (3/5 + 1/2)/2 = 11/20, A_O = (2/5 + 1/3)/2
    = 11/30; MDI = (A_T/1) / (A_O/2) = 3; AEI = (A_T/(A_T+A_O)) / (1/3) = 9/5."""
    from moir.evaluate.analysis import dominance_metrics
    from moir.evaluate.attention import GroupAttentionRecord

    queries = torch.tensor([[False, False, True, True]])
    groups = torch.tensor([[[True, False, False, False], [False, True, True, False]]])
    record = GroupAttentionRecord(queries, groups, ["text", "visual"], n_layers=1)
    query = torch.ones(1, 1, 4, 1)
    key = torch.tensor([3.0, 1.0, 1.0, 1.0]).log().view(1, 1, 4, 1)
    record.reduce(0, query, key, None, 1.0)
    torch.testing.assert_close(record.mass[0, 0], torch.tensor([11 / 20, 11 / 30]))
    raw = [{"n_text": 1, "n_visual": 2, "attn_text": record.mass[0, :, 0].tolist(),
            "attn_visual": record.mass[0, :, 1].tolist()}]
    result = dominance_metrics(raw)
    assert result["mdi"]["all"]["mean"] == pytest.approx(3.0)
    assert result["aei"]["all"]["mean"] == pytest.approx(9 / 5)


def test_mdi_averages_the_masses_over_layers_then_takes_the_ratio():
    """Three layers, |T| = 4, |O| = 8: A_T = (0.6, 0.3, 0.3), A_O = (0.2, 0.1, 0.3). All layers: masses 0.4 and
    0.2, MDI (0.4/4)/(0.2/8) = 4 (the mean of the per-layer ratios 6, 6, 2 would be 14/3), AEI (2/3)/(1/3) = 2;
    each third is one layer: MDI 6, 6, 2."""
    from moir.evaluate.analysis import dominance_metrics

    result = dominance_metrics([{"n_text": 4, "n_visual": 8, "attn_text": [0.6, 0.3, 0.3],
                                 "attn_visual": [0.2, 0.1, 0.3]}])
    assert result["mdi"]["all"]["mean"] == pytest.approx(4.0)
    assert result["aei"]["all"]["mean"] == pytest.approx(2.0)
    assert [result["mdi"][third]["mean"] for third in ("early", "middle", "late")] == pytest.approx([6.0, 6.0, 2.0])


# ---------------------------------------------------------------------------------------------- rank layers


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_rank_is_taken_before_the_final_norm_and_at_the_router_output(vlms, name):
    from moir.evaluate.analysis import analyse_batch
    from moir.evaluate.attention import decoder_layers, record_layer_output
    from moir.metrics import effective_rank

    vlm = vlms[name]
    examples = _examples(name)[:2]
    batch = vlm.collate(examples, with_answer=True)
    with torch.no_grad(), record_layer_output(vlm.hf_model, -1) as recorded:
        output = vlm.forward(batch, output_hidden_states=True)
    norm = vlm.hf_model.get_decoder().norm
    with torch.no_grad():
        # hidden_states[-1] is the final norm applied to the last decoder layer's output, not that output
        torch.testing.assert_close(norm(recorded["output"]), output.hidden_states[-1])
        assert not torch.allclose(recorded["output"], output.hidden_states[-1])
        embeddings = vlm.input_embeddings(batch)
    torch.testing.assert_close(output.hidden_states[0], embeddings)
    n_hidden = len(decoder_layers(vlm.hf_model)) + 1
    results = analyse_batch(vlm, examples, [ex.answer for ex in examples], n_hidden - 1)
    for row, result in enumerate(results):
        text, visual = batch["text_mask"][row], batch["visual_mask"][row]
        assert result["erank_text"] == pytest.approx(effective_rank(recorded["output"][row][text]), rel=1e-5)
        assert result["erank_visual"] == pytest.approx(effective_rank(recorded["output"][row][visual]), rel=1e-5)
        assert result["erank_text_input"] == pytest.approx(effective_rank(embeddings[row][text]), rel=1e-5)
        assert result["erank_visual_input"] == pytest.approx(effective_rank(embeddings[row][visual]), rel=1e-5)
