"""Quarantine tables: rows a stage could not keep, each with the reason, so nothing is lost."""

from __future__ import annotations

from typing import Any

import polars as pl

QUARANTINE_COLUMNS = ["stage", "seed_id", "field", "text", "reason"]


def quarantine_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={c: pl.String for c in QUARANTINE_COLUMNS})


def reason_counts(quarantine: pl.DataFrame) -> dict[str, int]:
    """Counts per reason kind: the text before any detail in parentheses or after a colon."""
    counts: dict[str, int] = {}
    for reason in quarantine["reason"].to_list():
        kind = reason.split(" (")[0].split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


WITHHELD = "[withheld: possibly operational text, not stored]"


def safe_text(text: str, reason: str, label: str) -> str:
    """The text to store for a quarantined row. Text that failed for looking operational, or a
    model's answer where a paraphrase of an illegitimate request was wanted, is withheld, so
    that no artefact (quarantine files included) carries it."""
    if reason.startswith("operational content"):
        return WITHHELD
    if label == "illegitimate" and reason.startswith("generator answered"):
        return WITHHELD
    return text
