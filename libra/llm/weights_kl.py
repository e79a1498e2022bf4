"""How far one GGUF's next-token distributions are from another's on the same text: the
check that a converted copy (libra/llm/weights.py) is still the shipped model. Used by
`bench/llm_throughput.py` and tests/test_llm.py; no stage imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def next_token_logprobs(path: Path, text: str, n_threads: int, max_tokens: int = 1500) -> np.ndarray:
    """(tokens, vocab) log-probabilities llama.cpp gives at every position of `text` (first `max_tokens` tokens)."""
    import llama_cpp

    from libra.llm.llama_server import choose_weight_buffers

    choose_weight_buffers()  # in-process too: llama.cpp's AMX buffers crash decode on AMX CPUs
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(256, max_tokens + 8), n_threads=n_threads, verbose=False, logits_all=True)
    tokens = llm.tokenize(text.encode())[:max_tokens]
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    del llm
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Divergence:
    kl: float  # mean KL(reference || other) per position, nats
    top1_agreement: float  # share of positions where both give the same most likely token
    tokens: int


def divergence(reference: Path, other: Path, text: str, n_threads: int, max_tokens: int = 1500) -> Divergence:
    ref = next_token_logprobs(reference, text, n_threads, max_tokens)
    alt = next_token_logprobs(other, text, n_threads, max_tokens)
    kl = float((np.exp(ref) * (ref - alt)).sum(axis=1).mean())
    return Divergence(kl=kl, top1_agreement=float((ref.argmax(axis=1) == alt.argmax(axis=1)).mean()), tokens=len(ref))
