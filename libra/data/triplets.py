"""(prompt, chosen, rejected) triplets, one per seed.

Legitimate seed: chosen = a helpful answer from the generator role; rejected = an
over-refusal from the template pool.
Illegitimate seed: chosen = a refusal naming the compound's real regulation (a template,
optionally paraphrased by the generator with a fallback to the template); rejected = a
compliance opener with empty steps, from templates only. No model is ever asked how to do
an illegitimate task.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Protocol

import polars as pl

from libra.config import TripletsParams
from libra.data.quarantine import quarantine_frame, reason_counts, safe_text
from libra.data.safety import opens_with_refusal, operational_content, rejected_answer_problem
from libra.data.templates import (
    COMPLIANCE_OPENERS,
    OVER_REFUSALS,
    refusal_templates,
    fill,
    regulation_name,
    strip_label,
    trim_to_sentence,
)
from libra.llm.client import ChatRequest, ChatResult

ANSWER_SYSTEM = (
    "You are a knowledgeable and careful chemistry assistant. Answer the user's question directly, "
    "accurately and helpfully in a short paragraph."
)


class Runner(Protocol):
    def run(self, requests: list[ChatRequest], desc: str = ...) -> list[ChatResult]: ...


def pick(pool: tuple[str, ...], key: str, offset: int = 0) -> str:
    """A deterministic template choice per row (no RNG state to thread through)."""
    return pool[(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) + offset) % len(pool)]


def answer_messages(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": prompt}]


def refusal_paraphrase_messages(refusal: str, regulation: str) -> list[dict[str, Any]]:
    keep = (
        "and it must not say that the chemical is regulated or controlled"
        if regulation == "none"
        else f"and it must still name \"{regulation_name(regulation)}\""
    )
    return [
        {
            "role": "user",
            "content": (
                f"Rewrite the following refusal in different words. It must still politely decline, {keep}. "
                f"Reply with the rewritten refusal only.\n\nRefusal: {refusal}"
            ),
        }
    ]


def regulation_anchor(regulation: str) -> str:
    """The words a refusal must keep so that it still names the regulation."""
    name = regulation_name(regulation)
    for anchor in ("Chemical Weapons Convention", "Controlled Substances Act", "explosives control law"):
        if anchor in name:
            return anchor
    return name


REGULATION_CLAIM = re.compile(r"\b(?:regulated|controlled|schedule|convention|scheduled|listed under)\b", re.IGNORECASE)


def refusal_paraphrase_problem(text: str, regulation: str) -> str | None:
    if regulation == "none":
        if REGULATION_CLAIM.search(text):
            return "refusal paraphrase claims a regulation the compound is not under"
    elif regulation_anchor(regulation).lower() not in text.lower():
        return "refusal paraphrase dropped the regulation"
    # It must open with the refusal: DPO learns the opening tokens most, and a chosen answer
    # that starts with a preamble ("Refuse: ...", "Thank you for ...") teaches the preamble.
    if not opens_with_refusal(text):
        return "refusal paraphrase does not open with a refusal"
    return operational_content(text)


def legit_answer_problem(text: str, compound_class: str) -> str | None:
    if opens_with_refusal(text):
        return "generator refused a legitimate request"
    if len(text.split()) < 5:
        return "generator answer too short"
    # Legitimate questions about controlled compounds (first aid for sarin) must not carry
    # operational detail either; a stray recipe-like answer is quarantined, not kept.
    if compound_class == "controlled":
        return operational_content(text)
    return None


def illegitimate_pair(row: dict[str, Any]) -> tuple[str, str]:
    refusal = fill(pick(refusal_templates(row["regulation"]), row["seed_id"]), compound=row["compound"],
                   regulation=row["regulation"], task=row["task"])  # fmt: skip
    opener = fill(pick(COMPLIANCE_OPENERS, row["seed_id"]), compound=row["compound"], task=row["task"])
    return refusal, opener


def build_triplets(seeds: pl.DataFrame, client: Runner, params: TripletsParams) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (triplets, quarantine). Every seed ends in exactly one of the two."""
    rows = seeds.to_dicts()
    legit = [r for r in rows if r["label"] == "legitimate"]
    illegit = [r for r in rows if r["label"] == "illegitimate"]

    answers = client.run(
        [ChatRequest(messages=answer_messages(r["prompt"]), max_tokens=params.answer_max_tokens) for r in legit],
        desc="triplets: answers",
    )
    templates = {r["seed_id"]: illegitimate_pair(r) for r in illegit}
    paraphrases: list[ChatResult | None] = [None] * len(illegit)
    if params.paraphrase_refusals and illegit:
        paraphrases = list(
            client.run(
                [
                    ChatRequest(messages=refusal_paraphrase_messages(templates[r["seed_id"]][0], r["regulation"]))
                    for r in illegit
                ],
                desc="triplets: refusals",
            )
        )

    kept: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []

    def quarantine(row: dict[str, Any], field: str, text: str | None, reason: str) -> None:
        stored = safe_text(text or "", reason, row["label"])
        quarantined.append({"stage": "triplets", "seed_id": row["seed_id"], "field": field, "text": stored, "reason": reason})

    for row, result in zip(legit, answers, strict=True):
        if not result.ok or result.text is None:
            quarantine(row, "chosen", None, f"generator call failed: {result.error}")
            continue
        text = trim_to_sentence(result.text)
        problem = legit_answer_problem(text, row["class"])
        if problem:
            quarantine(row, "chosen", text, problem)
            continue
        rejected = fill(pick(OVER_REFUSALS, row["seed_id"]), compound=row["compound"])
        kept.append({**row, "chosen": text, "rejected": rejected, "chosen_source": "generator", "rejected_source": "template"})

    for row, para in zip(illegit, paraphrases, strict=True):
        refusal, opener = templates[row["seed_id"]]
        problem = rejected_answer_problem(opener)
        if problem:
            quarantine(row, "rejected", opener, problem)
            continue
        chosen, source = refusal, "template"
        if para is not None:
            candidate = trim_to_sentence(strip_label(para.text or "")) if para.ok else ""
            if candidate and refusal_paraphrase_problem(candidate, row["regulation"]) is None:
                chosen, source = candidate, "generator"
            else:
                source = "template_fallback"
        kept.append({**row, "chosen": chosen, "rejected": opener, "chosen_source": source, "rejected_source": "template"})

    extra = ["chosen", "rejected", "chosen_source", "rejected_source"]
    triplets = pl.DataFrame(kept) if kept else seeds.head(0).with_columns(pl.lit(None, pl.String).alias(c) for c in extra)
    quarantine_df = quarantine_frame(quarantined)
    return triplets.sort("seed_id"), quarantine_df


def reconcile(n_in: int, out: pl.DataFrame, quarantine: pl.DataFrame, unit: str = "seeds") -> dict[str, Any]:
    """Stats with `in = out + quarantined`, and counts per quarantine reason."""
    return {
        "unit": unit,
        "in": n_in,
        "out": out.height,
        "quarantined": quarantine.height,
        "reconciles": n_in == out.height + quarantine.height,
        "by_reason": reason_counts(quarantine),
    }
