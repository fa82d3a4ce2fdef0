"""Prompts and batches: an example's prompt rendered in the family's chat template, tokenised with the masks the
router and the analysis read (text, visual, answer, query), and a batch of examples padded into tensors.

`query_mask` (batches with answers): the positions that produce the answer, i.e. the queries a generation loop
feeds: the last prompt token through the last answer token before the end-of-turn token (the trailing special
tokens of the answer text). Position i's output predicts token i+1, so these positions produce every answer token
and the end-of-turn token; a one-token answer has the last prompt token and that token as queries."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from moir.data.manifest import MEDIA_KINDS
from moir.models.inputs import Example

IGNORE_INDEX = -100
# Memoised tokenisations per wrapper (a few hundred bytes each): bounded, cleared when full.
TOKENIZATION_MEMO_ENTRIES = 200_000
# Stands in for the prompt while the chat template is rendered, to find where the prompt text lies.
_PROMPT_SENTINEL = "\x00moir-prompt\x00"


def render_prompt(vlm, example: Example, n_visual_tokens: int) -> tuple[str, tuple[int, int]]:
    """The example's prompt in the family's chat template, placeholders expanded to the visual-token count,
    and the character span of the prompt text in it."""
    before, after = template_parts(vlm, example.media_kind, n_visual_tokens)
    return before + example.prompt + after, (len(before), len(before) + len(example.prompt))


def template_parts(vlm, media_kind: str, n_visual_tokens: int) -> tuple[str, str]:
    """The chat template rendered around a user turn of one medium (placeholders expanded): the text before the
    prompt and after it. Rendered with the family's template once per (medium, visual-token count)."""
    key = ("template", media_kind, n_visual_tokens)
    if key in vlm.tokenization_memo:
        return vlm.tokenization_memo[key]
    content: list[dict] = []
    if media_kind != "none":
        content.append({"type": media_kind})
    content.append({"type": "text", "text": _PROMPT_SENTINEL})
    rendered = vlm.processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    before, after = rendered.split(_PROMPT_SENTINEL)
    if media_kind != "none":
        placeholder = vlm.tokenizer.convert_ids_to_tokens(vlm.placeholder_ids()[media_kind])
        if (before + after).count(placeholder) != 1:
            raise ValueError(f"{vlm.name}: the chat template must place exactly one {placeholder} per media")
        before = before.replace(placeholder, placeholder * n_visual_tokens)
        after = after.replace(placeholder, placeholder * n_visual_tokens)
    vlm.tokenization_memo[key] = before, after
    return before, after


def tokenize(vlm, example: Example, n_visual_tokens: int, with_answer: bool) -> tuple[list[int], list[bool], int]:
    """(input ids, text mask, number of answer tokens at the end) of one example."""
    ids, text_mask, n_answer, _ = tokenize_with_end(vlm, example, n_visual_tokens, with_answer)
    return ids, text_mask, n_answer


def tokenize_with_end(vlm, example: Example, n_visual_tokens: int,
                      with_answer: bool) -> tuple[list[int], list[bool], int, int]:
    """`tokenize`, and the number of end-of-turn tokens closing the answer (its trailing special tokens).

    A pure function of the tokenizer, the texts, the medium and the visual-token count: each epoch of a training
    run tokenises the same examples again, so the result is memoised on the wrapper (`tokenization_memo`),
    keyed by everything it depends on."""
    key = (example.prompt, example.answer if with_answer else None, example.media_kind, n_visual_tokens,
           with_answer)
    memo = vlm.tokenization_memo
    if key not in memo:
        if len(memo) >= TOKENIZATION_MEMO_ENTRIES:
            memo.clear()
        memo[key] = _tokenize_with_end(vlm, example, n_visual_tokens, with_answer)
    ids, text_mask, n_answer, n_end = memo[key]
    return list(ids), list(text_mask), n_answer, n_end


def _tokenize_with_end(vlm, example: Example, n_visual_tokens: int,
                       with_answer: bool) -> tuple[tuple[int, ...], tuple[bool, ...], int, int]:
    for kind, token_id in vlm.placeholder_ids().items():
        token = vlm.tokenizer.convert_ids_to_tokens(token_id)
        if token in example.prompt:
            raise ValueError(f"example {example.id}: the prompt contains the {kind} placeholder {token!r}")
    prompt_text, (start, end) = render_prompt(vlm, example, n_visual_tokens)
    prompt_ids = vlm.tokenizer(prompt_text)["input_ids"]
    if not with_answer:
        text = prompt_text
    elif example.answer is None:
        raise ValueError(f"example {example.id}: no answer to train on (answer is None)")
    else:
        text = prompt_text + vlm.answer_text(example.answer)
    encoding = vlm.tokenizer(text, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            f"example {example.id}: the answer {example.answer!r} changes the tokens of the prompt before it "
            "(the tokenizer merges across the prompt/answer boundary)"
        )
    special = set(vlm.tokenizer.all_special_ids)
    text_mask = [
        i < len(prompt_ids) and token_id not in special and token_start < end and token_end > start
        for i, (token_id, (token_start, token_end)) in enumerate(zip(ids, encoding["offset_mapping"]))
    ]
    n_answer = len(ids) - len(prompt_ids)
    n_end = 0
    while n_end < n_answer and ids[len(ids) - 1 - n_end] in special:
        n_end += 1
    return tuple(ids), tuple(text_mask), n_answer, n_end


def collate(vlm, examples: Sequence[Example], with_answer: bool = True) -> dict[str, Tensor]:
    """Tokenise and pad a batch; see the interface in moir/models/__init__.py for the keys.

    Padding is on the right for training batches (`with_answer=True`) and on the left for generation.
    """
    if not examples:
        raise ValueError("collate: no examples")
    for example in examples:
        if example.media_kind not in MEDIA_KINDS:
            raise ValueError(f"example {example.id}: media_kind must be one of {MEDIA_KINDS}, "
                             f"got {example.media_kind!r}")
        if example.media_kind != "none" and example.media is None and example.pixels is None:
            raise ValueError(f"example {example.id}: media_kind is {example.media_kind!r} but it has neither "
                             "cached features (media) nor pixels")
        if example.media is not None and example.media.kind != example.media_kind:
            raise ValueError(f"example {example.id}: media_kind is {example.media_kind!r} but its cached "
                             f"features are of a {example.media.kind!r}")
    media, n_visual = vlm.media_inputs(examples)
    rows = [tokenize_with_end(vlm, ex, n, with_answer) for ex, n in zip(examples, n_visual)]

    length = max(len(ids) for ids, _, _, _ in rows)
    batch_size = len(rows)
    input_ids = torch.full((batch_size, length), vlm.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
    text_mask = torch.zeros(batch_size, length, dtype=torch.bool)
    answer_mask = torch.zeros(batch_size, length, dtype=torch.bool)
    query_mask = torch.zeros(batch_size, length, dtype=torch.bool)
    for row, (ids, row_text_mask, n_answer, n_end) in enumerate(rows):
        span = slice(0, len(ids)) if with_answer else slice(length - len(ids), length)
        input_ids[row, span] = torch.tensor(ids)
        attention_mask[row, span] = 1
        text_mask[row, span] = torch.tensor(row_text_mask)
        answer_mask[row, span.stop - n_answer: span.stop] = n_answer > 0
        if n_answer > 0:  # the last prompt token through the last answer token before the end of turn
            query_mask[row, span.stop - n_answer - 1: span.stop - n_end] = True
    visual_mask = torch.zeros_like(text_mask)
    for token_id in vlm.placeholder_ids().values():
        visual_mask |= input_ids == token_id
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "text_mask": text_mask,
        "visual_mask": visual_mask,
        "answer_mask": answer_mask,
        **media,
    }
    if with_answer:
        batch["query_mask"] = query_mask
        batch["labels"] = input_ids.masked_fill(~answer_mask, IGNORE_INDEX)
    return batch
