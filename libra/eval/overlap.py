"""Word n-gram overlap between training prompts and evaluation prompts.

    share = overlap_share(suite["prompt"], train["prompt"], n=8, mask=names)

Text is lowercased and split into runs of letters and digits. Compound identifiers
(names, SMILES, CAS numbers) can be masked first with one placeholder token, so two
prompts that differ only in the compound they name count as the same phrasing, and a long
IUPAC name alone does not make an 8-gram. A prompt overlaps when any of its n-grams
occurs in any training prompt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PLACEHOLDER = "cmpd"
_WORD = re.compile(r"[a-z0-9]+")
_SLOT = re.compile(r"\{[a-z_0-9]+\}")


def _mask_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first so "sarin" does not eat part of a longer name; bounded so that a short
    # SMILES such as "CCO" does not match inside "tobacco".
    alts = sorted({t.strip() for t in terms if t and t.strip()}, key=len, reverse=True)
    if not alts:
        return None
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, alts)) + r")(?![A-Za-z0-9])", re.IGNORECASE)


def mask_text(text: str, terms: Iterable[str] | re.Pattern[str] | None = ()) -> str:
    """Replace each term (case-insensitive, whole tokens) and each `{slot}` with the placeholder."""
    out = _SLOT.sub(f" {PLACEHOLDER} ", text)
    pattern = terms if isinstance(terms, re.Pattern) or terms is None else _mask_pattern(terms)
    return pattern.sub(f" {PLACEHOLDER} ", out) if pattern is not None else out


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int, mask: Iterable[str] | re.Pattern[str] | None = ()) -> set[tuple[str, ...]]:
    toks = words(mask_text(text, mask))
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def overlapping(eval_texts: Iterable[str], train_texts: Iterable[str], n: int, mask: Iterable[str] = ()) -> list[str]:
    """The evaluation texts that share at least one word n-gram with some training text."""
    pattern = _mask_pattern(mask)
    seen: set[tuple[str, ...]] = set()
    for text in train_texts:
        seen |= ngrams(text, n, pattern)
    return [text for text in eval_texts if ngrams(text, n, pattern) & seen]


def overlap_share(eval_texts: Iterable[str], train_texts: Iterable[str], n: int, mask: Iterable[str] = ()) -> float:
    """The share of evaluation texts with an n-gram in common with the training texts (0 when empty)."""
    eval_list = list(eval_texts)
    if not eval_list:
        return 0.0
    return len(overlapping(eval_list, train_texts, n, mask)) / len(eval_list)
