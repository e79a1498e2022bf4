"""Exact and near-duplicate detection on normalised text (character n-gram Jaccard)."""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def char_ngrams(text: str, n: int) -> frozenset[str]:
    t = normalise(text)
    if len(t) <= n:
        return frozenset({t})
    return frozenset(t[i : i + n] for i in range(len(t) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(texts: list[str], threshold: float, n: int) -> dict[int, str]:
    """Indices to drop, each with its reason, keeping the first of every duplicate group."""
    grams = [char_ngrams(t, n) for t in texts]
    keys = [normalise(t) for t in texts]
    dropped: dict[int, str] = {}
    kept: list[int] = []
    for i in range(len(texts)):
        for j in kept:
            if keys[i] == keys[j]:
                dropped[i] = "exact duplicate"
                break
            sim = jaccard(grams[i], grams[j])
            if sim >= threshold:
                dropped[i] = f"near duplicate (similarity {sim:.2f} >= {threshold})"
                break
        else:
            kept.append(i)
    return dropped
