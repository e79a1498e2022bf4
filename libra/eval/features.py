"""A prompt's features for a linear reading of a model's hidden states (libra probe, the readout gate).

One forward pass over the chat-templated prompt, left-padded, so position -1 is every row's
last prompt token: the position whose state decides the first answer token. The feature at
a hidden-state index is that token's vector beside the mean over the prompt's real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def prompt_features(
    model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 32, layers: Sequence[int] | None = None
) -> np.ndarray:
    """[prompt, layer, 2 * hidden]: each hidden state's last-token vector beside its token mean
    (index 0: the embeddings), for every hidden state or only `layers`, in that order."""
    import torch

    from libra.eval.answer import chat_texts

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = chat_texts(tokenizer, prompts[start : start + batch_size])
        # The chat template already holds every special token the model expects (as in answer.py).
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            states = model(**enc.to(model.device), output_hidden_states=True).hidden_states
        mask = enc["attention_mask"].unsqueeze(-1).bool()
        picked = [states[i] for i in layers] if layers is not None else list(states)
        per_layer = [
            torch.cat([h[:, -1, :].float(), torch.where(mask, h.float(), 0.0).sum(1) / mask.sum(1)], -1) for h in picked
        ]
        out.append(torch.stack(per_layer, 1).cpu().numpy())
    return np.concatenate(out)
