"""Content checks that keep harmful material out of every artefact.

`operational_content(text)` returns why a text looks like actionable instructions
(quantities, reaction conditions, reagent steps), or None. It is deliberately strict:
a false positive only quarantines a row; a false negative would ship a harmful one.
"""

from __future__ import annotations

import re

from libra.data.templates import TASK_INTENT_WORDS

_QUANTITY = re.compile(
    r"\b\d+(?:[.,]\d+)?\s*(?:mg|g|kg|µg|ug|ml|mL|l|L|mol|mmol|M|N|%|ppm|psi|bar|atm|equiv|eq)\b"
)
_TEMPERATURE = re.compile(r"\b\d+(?:[.,]\d+)?\s*(?:°\s*[CFK]|degrees?\b|deg\b|K\b)", re.IGNORECASE)
_DURATION = re.compile(r"\b\d+(?:[.,]\d+)?\s*(?:min|minutes|h|hours|hrs)\b", re.IGNORECASE)
_CONDITIONS = re.compile(
    r"\b(?:reflux\w*|distil\w*|titrat\w*|recrystalli\w*|precipitat\w*|catalys\w*|anhydrous|"
    r"stir(?:red|ring)?\s+(?:for|at|until)|heat(?:ed|ing)?\s+(?:to|at|under)|cool(?:ed|ing)?\s+to|"
    r"dropwise|in\s+vacuo|under\s+(?:nitrogen|argon|inert))\b",
    re.IGNORECASE,
)
_REAGENT_STEP = re.compile(
    r"\b(?:react|mix|combine|add|dissolve|treat)\w*\b[^.\n]{0,60}\b(?:with|to|in|into)\b", re.IGNORECASE
)
_STEP_LINE = re.compile(r"^[ \t]*(?:\d+[.)]|step[ \t]*\d+[ \t]*:?|[-*•])[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_EMPTY_STEP = re.compile(r"^(?:\[redacted\]|\.{3}|…|)$", re.IGNORECASE)


def operational_content(text: str) -> str | None:
    """Why `text` carries operational detail, or None when it does not."""
    for name, pattern in (
        ("quantity", _QUANTITY),
        ("temperature", _TEMPERATURE),
        ("duration", _DURATION),
        ("reaction condition", _CONDITIONS),
        ("reagent step", _REAGENT_STEP),
    ):
        match = pattern.search(text)
        if match:
            return f"operational content ({name}: {match.group(0).strip()[:40]!r})"
    return None


def filled_steps(text: str) -> int:
    """How many list/step lines carry content (an opener with empty steps has none)."""
    return sum(1 for m in _STEP_LINE.finditer(text) if not _EMPTY_STEP.match(m.group(1).strip()))


def rejected_answer_problem(text: str) -> str | None:
    """Validator for rejected answers of illegitimate seeds: only an opener with empty steps."""
    reason = operational_content(text)
    if reason:
        return reason
    if filled_steps(text) > 0:
        return "operational content (steps are filled in; only empty or [redacted] steps are allowed)"
    return None


_REFUSAL_OPENING = re.compile(
    r"^\W*(?:i'?m\s+(?:sorry|not\s+able|unable)|sorry|i\s+(?:can(?:no|')t|cannot|won'?t|will\s+not|am\s+(?:sorry|not\s+able|unable))|"
    r"i\s+must\s+decline|as\s+an\s+ai|unfortunately,?\s+i)",
    re.IGNORECASE,
)


def opens_with_refusal(text: str) -> bool:
    return bool(_REFUSAL_OPENING.search(text.strip()[:120]))


_META = re.compile(r"\b(?:rephras\w*|paraphras\w*|rewrit\w*|reword\w*)\b", re.IGNORECASE)


def leaked_instruction(text: str) -> str | None:
    """A paraphrase that echoes the rewriting instruction ("Please rephrase the steps ...")."""
    match = _META.search(text)
    return f"leaked instruction ({match.group(0)!r})" if match else None


def keeps_compound(text: str, compound: str) -> bool:
    return compound.lower() in text.lower()


def keeps_intent(text: str, task: str) -> bool:
    """Whether a paraphrase of a task's prompt still asks for that task (for illegitimate tasks)."""
    words = TASK_INTENT_WORDS.get(task)
    if not words:
        return True
    low = text.lower()
    return any(w in low for w in words)
