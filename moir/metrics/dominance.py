"""Modality dominance from attention mass: MDI and AEI (text-dominance metrics), and how layers are grouped.

Inputs are the attention mass that the answer tokens put on the prompt's text tokens T (A_T) and on the non-text
(visual/video) tokens O (A_O), heads averaged, and the group sizes |T| and |O|:

    MDI = (A_T / |T|) / (A_O / |O|)                  attention per text token over attention per visual token
    AEI = P_T / Q_T,  P_T = A_T / (A_T + A_O),  Q_T = |T| / (|T| + |O|)
                                                     text's share of the attention over its share of the tokens

Both are 1 when attention is spread evenly over tokens; above 1, text dominates. The masses need not sum to 1
(answer tokens also attend to template tokens and to each other); only the two groups enter.

`layer_groups` splits a decoder's layers into early/middle/late thirds (sizes differ by at most one, the earlier
thirds take the remainder), the ranges over which the report averages the per-layer masses.
"""

from __future__ import annotations

import math


def modality_dominance(attn_text: float, n_text: int, attn_other: float, n_other: int) -> tuple[float, float]:
    """(MDI, AEI of text) from the attention mass on each group and the group sizes; inf when A_O is 0."""
    if n_text <= 0 or n_other <= 0:
        raise ValueError(f"group sizes must be positive, got |T|={n_text}, |O|={n_other}")
    if attn_text < 0 or attn_other < 0 or not (math.isfinite(attn_text) and math.isfinite(attn_other)):
        raise ValueError(f"attention masses must be finite and non-negative, got A_T={attn_text}, A_O={attn_other}")
    if attn_text + attn_other == 0:
        raise ValueError("no attention mass on either group: MDI and AEI are undefined")
    share_of_attention = attn_text / (attn_text + attn_other)
    share_of_tokens = n_text / (n_text + n_other)
    aei = share_of_attention / share_of_tokens
    mdi = math.inf if attn_other == 0 else (attn_text / n_text) / (attn_other / n_other)
    return mdi, aei


def layer_groups(n_layers: int) -> dict[str, list[int]]:
    """Layer indices of all layers and of the early/middle/late thirds (a third is empty when n_layers < 3)."""
    if n_layers <= 0:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    base, extra = divmod(n_layers, 3)
    sizes = [base + (1 if third < extra else 0) for third in range(3)]
    groups = {"all": list(range(n_layers))}
    start = 0
    for name, size in zip(("early", "middle", "late"), sizes):
        groups[name] = list(range(start, start + size))
        start += size
    return groups
