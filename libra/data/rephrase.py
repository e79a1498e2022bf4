"""Augmentation: paraphrase prompts and chosen answers, then cross them into pairs.

Per triplet: k prompt paraphrases and m chosen-answer paraphrases from the generator role,
and m extra rejected answers from the template pools (rejected answers for illegitimate
seeds are never asked of a model). Every variant is checked (compound kept, intent kept,
no leaked rewriting instruction, no operational content, not a near-duplicate); failures
are quarantined with their reason. Variants are crossed into (prompt, chosen, rejected)
pairs, shuffled with a per-seed seed and capped at max_pairs_per_seed.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass
from typing import Any

import polars as pl
from libra.config import RephraseParams
from libra.data.dedup import near_duplicates, normalise
from libra.data.safety import (
    filled_steps,
    keeps_compound,
    keeps_intent,
    leaked_instruction,
    opens_with_refusal,
    operational_content,
)
from libra.data.templates import COMPLIANCE_OPENERS, OVER_REFUSALS, fill, strip_label
from libra.data.quarantine import quarantine_frame, reason_counts, safe_text
from libra.data.triplets import Runner, pick, refusal_paraphrase_problem
from libra.llm.client import ChatRequest

PAIR_COLUMNS = [
    "pair_id", "seed_id", "compound_id", "compound", "class", "regulation", "group", "task", "label",
    "prompt", "chosen", "rejected",
]  # fmt: skip


_QUESTION_START = re.compile(
    r"^(?:how|what|where|which|who|why|when|is|are|can|could|would|should|do|does|tell|describe|explain|list|give|"
    r"please|i\s+(?:want|need|would))\b",
    re.IGNORECASE,
)


def clean_reply(text: str, first_line_only: bool) -> str:
    """Plain-text paraphrase replies (no JSON grammar: 3-5x faster on llama.cpp) without
    the labels and quotes small models like to add."""
    text = text.strip()
    if first_line_only:
        text = next((line for line in text.splitlines() if line.strip()), "")
    return strip_label(text)


PLACEHOLDER = "Compound X"
_FEW_SHOT = (
    ("What is the boiling point of Compound X?", "At what temperature does Compound X boil?"),
    ("How can I get hold of Compound X?", "Where could I obtain Compound X?"),
    ("Why is Compound X regulated?", "What is the reason Compound X is subject to regulation?"),
)
# Small models misspell the placeholder ("Compund X", "Compon X"); all of those are put back.
_PLACEHOLDER_RE = re.compile(r"\bcomp[a-z]{0,8}\s+x\b", re.IGNORECASE)
_REPHRASE_INSTRUCTION = "Write this question in different words. Do not answer it. Question: "


def prompt_messages(prompt: str, compound: str) -> list[dict[str, Any]]:
    """Few-shot paraphrase request with the compound masked as a placeholder.

    The model never sees which compound an (illegitimate) request is about, so even when a
    small model answers instead of rephrasing, its output names no real compound; the
    placeholder is put back afterwards.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You rewrite questions. You never answer them."}]
    for question, rewrite in _FEW_SHOT:
        messages += [
            {"role": "user", "content": _REPHRASE_INSTRUCTION + question},
            {"role": "assistant", "content": rewrite},
        ]
    messages.append({"role": "user", "content": _REPHRASE_INSTRUCTION + prompt.replace(compound, PLACEHOLDER)})
    return messages


def unmask(text: str, compound: str) -> str:
    return _PLACEHOLDER_RE.sub(lambda _: compound, text)


def answer_messages(answer: str, compound: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": (
                "Rewrite the answer below in different words, keeping its meaning and every fact, "
                f'and keeping the name "{compound}". Reply with the rewritten answer only.\n\n'
                f"Answer: {answer}"
            ),
        }
    ]


def prompt_problem(text: str, row: dict[str, Any]) -> str | None:
    if not keeps_compound(text, row["compound"]):
        return "paraphrase dropped the compound"
    leaked = leaked_instruction(text)
    if leaked:
        return leaked
    if filled_steps(text) > 0 or len(text) > 3 * len(row["prompt"]) + 40:
        return "generator answered instead of rephrasing"
    if not text.rstrip().endswith("?") and not _QUESTION_START.match(text):
        return "generator answered instead of rephrasing (not a request)"
    if row["label"] == "illegitimate" and not keeps_intent(text, row["task"]):
        return "paraphrase flipped the intent"
    return operational_content(text)


def chosen_problem(text: str, row: dict[str, Any]) -> str | None:
    leaked = leaked_instruction(text)
    if leaked:
        return leaked
    if row["label"] == "illegitimate":
        return refusal_paraphrase_problem(text, row["regulation"])
    if not keeps_compound(text, row["compound"]):
        return "paraphrase dropped the compound"
    if opens_with_refusal(text):
        return "paraphrase turned an answer into a refusal"
    return operational_content(text) if row["class"] == "controlled" else None


def rejected_variants(row: dict[str, Any], m: int) -> list[str]:
    pool = COMPLIANCE_OPENERS if row["label"] == "illegitimate" else OVER_REFUSALS
    texts = [row["rejected"]]
    for j in range(1, len(pool)):
        if len(texts) > m:
            break
        candidate = fill(pick(pool, row["seed_id"], offset=j), compound=row["compound"], task=row["task"])
        if candidate not in texts:
            texts.append(candidate)
    return texts


@dataclass
class Variants:
    prompts: list[str]
    chosen: list[str]
    rejected: list[str]


def _pair_id(seed_id: str, prompt: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256("\x1f".join((seed_id, prompt, chosen, rejected)).encode()).hexdigest()[:16]


def cross(row: dict[str, Any], v: Variants, params: RephraseParams) -> list[dict[str, Any]]:
    combos = list(itertools.product(v.prompts, v.chosen, v.rejected))
    # The original triplet always survives the cap; the rest are a seeded sample.
    head, rest = combos[:1], combos[1:]
    random.Random(f"{params.seed}:{row['seed_id']}").shuffle(rest)
    base = {k: row[k] for k in PAIR_COLUMNS if k in row}
    return [
        {**base, "pair_id": _pair_id(row["seed_id"], p, c, r), "prompt": p, "chosen": c, "rejected": r}
        for p, c, r in (head + rest)[: params.max_pairs_per_seed]
    ]


def build_pairs(triplets: pl.DataFrame, client: Runner, params: RephraseParams) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    rows = triplets.sort("seed_id").to_dicts()
    prompt_reqs = [
        ChatRequest(messages=prompt_messages(r["prompt"], r["compound"]), sample=i, max_tokens=48)
        for r in rows
        for i in range(params.n_prompt)
    ]
    answer_reqs = [
        ChatRequest(messages=answer_messages(r["chosen"], r["compound"]), sample=i)
        for r in rows
        for i in range(params.n_answer)
    ]
    prompt_results = client.run(prompt_reqs, desc="rephrase: prompts") if prompt_reqs else []
    answer_results = client.run(answer_reqs, desc="rephrase: answers") if answer_reqs else []

    quarantined: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    n_candidates = 0
    for idx, row in enumerate(rows):
        variants = Variants(prompts=[row["prompt"]], chosen=[row["chosen"]], rejected=rejected_variants(row, params.n_answer))
        for field, results, n, check, target in (
            ("prompt", prompt_results, params.n_prompt, prompt_problem, variants.prompts),
            ("chosen", answer_results, params.n_answer, chosen_problem, variants.chosen),
        ):
            candidates: list[str] = []
            for res in results[idx * n : (idx + 1) * n]:
                n_candidates += 1
                text = clean_reply(res.text or "", first_line_only=field == "prompt") if res.ok else ""
                if field == "prompt":
                    text = unmask(text, row["compound"])
                reason = f"generator call failed: {res.error}" if not res.ok else (check(text, row) if text else "empty paraphrase")
                if reason:
                    quarantined.append({"stage": "rephrase", "seed_id": row["seed_id"], "field": field, "text": safe_text(text, reason, row["label"]), "reason": reason})
                else:
                    candidates.append(text)
            dupes = near_duplicates(target + candidates, params.near_dup_threshold, params.ngram)
            for j, text in enumerate(candidates, start=len(target)):
                if j in dupes:
                    quarantined.append({"stage": "rephrase", "seed_id": row["seed_id"], "field": field, "text": text, "reason": dupes[j]})
            target.extend(t for j, t in enumerate(candidates, start=len(target)) if j not in dupes)
        pairs.extend(cross(row, variants, params))

    # Across seeds, the same (prompt, chosen, rejected) after normalisation is kept once.
    seen: set[tuple[str, str, str]] = set()
    unique: list[dict[str, Any]] = []
    cross_seed_dupes = 0
    for p in pairs:
        key = (normalise(p["prompt"]), normalise(p["chosen"]), normalise(p["rejected"]))
        if key in seen:
            cross_seed_dupes += 1
            continue
        seen.add(key)
        unique.append(p)

    quarantine_df = quarantine_frame(quarantined)
    pairs_df = pl.DataFrame(unique, schema={c: pl.String for c in PAIR_COLUMNS}).sort("pair_id")
    n_kept = n_candidates - quarantine_df.height
    stats = {
        "unit": "paraphrases",
        "in": n_candidates,
        "out": n_kept,
        "quarantined": quarantine_df.height,
        "reconciles": n_candidates == n_kept + quarantine_df.height,
        "by_reason": reason_counts(quarantine_df),
        "triplets": len(rows),
        "pairs_before_dedup": len(pairs),
        "pairs": pairs_df.height,
        "cross_seed_duplicates": cross_seed_dupes,
        "pairs_per_seed": round(pairs_df.height / max(1, len(rows)), 2),
    }
    return pairs_df, quarantine_df, stats
