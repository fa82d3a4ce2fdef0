"""Cap an ASR transcript to a fixed number of tokens (or characters), so a video's prompt has a known length.

A 10-minute video's transcript can run to thousands of tokens; with the visual tokens bounded by the pixel budget
(moir.models.pixel_budget), the transcript cap is what keeps an MMBench-Video example inside `max_length`. The
beginning is kept (the cut is at a token boundary, then decoded back to text), and the result is marked with a
trailing " ..." only when something was cut.
"""

from __future__ import annotations

TRUNCATION_MARK = " ..."


def cap_transcript(text: str, *, tokenizer=None, max_tokens: int | None = None, max_chars: int | None = None) -> str:
    """The first `max_tokens` tokens (with `tokenizer`, the model's own) and/or `max_chars` characters of `text`.

    The mark's tokens count toward the cap: the returned text encodes to at most `max_tokens` tokens.
    None disables a cap; with neither, the text is returned unchanged.
    """
    if max_chars is not None:
        if max_chars < len(TRUNCATION_MARK):
            raise ValueError(f"max_chars must be >= {len(TRUNCATION_MARK)}, got {max_chars}")
        if len(text) > max_chars:
            text = text[: max_chars - len(TRUNCATION_MARK)].rstrip() + TRUNCATION_MARK
    if max_tokens is not None:
        if tokenizer is None:
            raise ValueError("a token cap needs the model's tokenizer")
        mark = tokenizer.encode(TRUNCATION_MARK, add_special_tokens=False)
        if max_tokens <= len(mark):
            raise ValueError(f"max_tokens must be > {len(mark)} (the truncation mark), got {max_tokens}")
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > max_tokens:
            keep = max_tokens - len(mark)
            while keep > 0:  # decoding then re-encoding may merge differently: shrink until it fits
                capped = tokenizer.decode(ids[:keep]).rstrip() + TRUNCATION_MARK
                if len(tokenizer.encode(capped, add_special_tokens=False)) <= max_tokens:
                    return capped
                keep -= 1
            return TRUNCATION_MARK.strip()
    return text
