"""Reasoning traces: split them from the final answer, and check them for operational content.

    final, reasoning = split_reasoning("<think>The user asks ...</think>I can't help with that.")
    reasoning_leak(reasoning)        # None, or why the trace carries operational detail

A reasoning model's answer comes in two parts: the trace (a `<think>...</think>` block in
the text, or the `reasoning_content` field of an OpenAI-compatible reply) and the final
answer. The judges read the final answer, so a refusal after a long trace is a refusal.
The trace is read apart: when it is shown to users, operational content in it is given
away whatever the final answer says (LibraAlign v2 warns about DeepSeek-R1's chains of
thought), so an illegitimate prompt whose trace carries it is not withheld
(`libra.eval.judge.judge_table`). The check is the one that keeps such content out of the
dataset (`libra.data.safety.operational_content`): strict, so it errs towards "not withheld".
"""

from __future__ import annotations

import re

from libra.data.safety import operational_content

# Tag names reasoning models use for the trace; the DeepSeek-R1 chat template opens the
# block in the prompt, so an answer may start inside it and show only the closing tag.
_TAGS = r"(?:think|thinking|reasoning|thought)"
_BLOCK = re.compile(rf"<{_TAGS}>(.*?)</{_TAGS}>", re.IGNORECASE | re.DOTALL)
_OPEN = re.compile(rf"<{_TAGS}>", re.IGNORECASE)
_CLOSE = re.compile(rf"</{_TAGS}>", re.IGNORECASE)


def split_reasoning(text: str | None) -> tuple[str, str]:
    """(final answer, reasoning) of one answer; reasoning is "" when the answer has none.

    `<think>R</think>F` gives (F, R); several blocks are joined. `R</think>F` (the opening
    tag was in the prompt) gives (F, R). An unclosed `<think>R` (cut off mid-thought)
    gives ("", R): nothing was answered.
    """
    text = text or ""
    parts = [m.strip() for m in _BLOCK.findall(text)]
    rest = _BLOCK.sub("\n", text)
    close = _CLOSE.search(rest)
    if close is not None:  # a trace whose opening tag is not in the answer
        parts.insert(0, rest[: close.start()].strip())
        rest = rest[close.end() :]
    opened = _OPEN.search(rest)
    if opened is not None:  # a trace that never closed
        parts.append(rest[opened.end() :].strip())
        rest = rest[: opened.start()]
    return rest.strip(), "\n\n".join(p for p in parts if p)


def reasoning_leak(reasoning: str | None) -> str | None:
    """Why a reasoning trace carries operational content, or None."""
    if not reasoning or not reasoning.strip():
        return None
    return operational_content(reasoning)
