"""A prompt's features for a linear reading of a model's hidden states (libra probe, the readout gate).

One forward pass over the chat-templated prompt, left-padded, so position -1 is every row's
last prompt token: the position whose state decides the first answer token. The feature at
a hidden-state index is that token's vector beside the mean over the prompt's real tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    decoder = _decoder_layers(model)
    n_layers = len(decoder) if decoder is not None else None
    # hidden_states[k < n_layers] is the input of decoder layer k: run only the layers below the
    # deepest one asked for (the last state, index n_layers, is after the final norm: run them all).
    depth = max(layers) if layers is not None and n_layers is not None and max(layers) < n_layers else None
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = chat_texts(tokenizer, prompts[start : start + batch_size])
        # The chat template already holds every special token the model expects (as in answer.py).
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad(), _first_layers(model, decoder, depth):
            states = model(**enc.to(model.device), output_hidden_states=True, use_cache=False).hidden_states
        mask = enc["attention_mask"].unsqueeze(-1).bool()
        picked = [states[i] for i in layers] if layers is not None else list(states)
        per_layer = [
            torch.cat([h[:, -1, :].float(), torch.where(mask, h.float(), 0.0).sum(1) / mask.sum(1)], -1) for h in picked
        ]
        out.append(torch.stack(per_layer, 1).cpu().numpy())
    return np.concatenate(out)


def _decoder_layers(model: Any) -> Any:
    """The model's decoder layer list (Llama-style `model.model.layers`), or None for another layout."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return layers if layers is not None and hasattr(layers, "__len__") else None


@contextmanager
def _first_layers(model: Any, decoder: Any, depth: int | None) -> Iterator[None]:
    """Run only decoder layers 0..depth inside the block, so hidden_states[depth] is still a layer's raw input."""
    if depth is None or decoder is None:
        yield
        return
    model.model.layers = decoder[: depth + 1]
    try:
        yield
    finally:
        model.model.layers = decoder
