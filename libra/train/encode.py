"""Turn preference pairs into token ids, once, for both the ref_logps and the dpo stage.

TRL's DPOTrainer tokenises a conversational pair by applying the chat template to the
prompt (with the generation prompt) and to prompt + completion, and splits at their
common prefix. `encode_pair` does exactly that, then applies libra's truncation, which
TRL 1.16 no longer does for prompts: the prompt keeps its last `max_prompt_length`
tokens (the end holds the question and the assistant header), and each completion keeps
its first `max_length - len(prompt)` tokens. Both stages call this one function, so the
reference log-probs are computed over the very tokens the policy is trained on.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from libra.errors import InputError

PAIR_COLUMNS = ("pair_id", "prompt", "chosen", "rejected")


def conversation(prompt: str, completion: str | None = None) -> list[dict[str, str]]:
    """The chat messages for a raw user prompt and, optionally, the assistant's reply."""
    messages = [{"role": "user", "content": prompt}]
    if completion is not None:
        messages.append({"role": "assistant", "content": completion})
    return messages


def _ids(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_pair(
    tokenizer: Any, prompt: str, chosen: str, rejected: str, max_prompt_length: int, max_length: int
) -> dict[str, list[int]]:
    """Token ids of one pair: prompt_ids, chosen_ids, rejected_ids (truncated as the module says)."""
    prompt_ids = _ids(tokenizer, conversation(prompt), add_generation_prompt=True)
    full_chosen = _ids(tokenizer, conversation(prompt, chosen))
    full_rejected = _ids(tokenizer, conversation(prompt, rejected))
    # Some templates render a prompt differently alone than followed by a reply; the
    # completion then starts where the two diverge (TRL's rule).
    cut = min(_common_prefix(prompt_ids, full_chosen), _common_prefix(prompt_ids, full_rejected))
    prompt_ids = prompt_ids[:cut][-max_prompt_length:]
    room = max_length - len(prompt_ids)
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": full_chosen[cut:][:room],
        "rejected_ids": full_rejected[cut:][:room],
    }


def check_pairs(df: pl.DataFrame, source: str) -> None:
    missing = [c for c in PAIR_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{source} lacks column(s) {missing}; it must be a train.parquet from the split stage")
    if df.height == 0:
        raise InputError(f"{source} has no rows; the split stage produced an empty training set")
    dup = df.filter(pl.col("pair_id").is_duplicated())
    if dup.height:
        raise InputError(f"{source}: pair_id {dup['pair_id'][0]!r} appears more than once; pair ids must be unique")
    for col in ("prompt", "chosen", "rejected"):
        empty = df.filter(pl.col(col).is_null() | (pl.col(col).str.strip_chars() == ""))
        if empty.height:
            raise InputError(f"{source}: pair {empty['pair_id'][0]!r} has an empty {col}; fix or drop it upstream")


def encode_pairs(df: pl.DataFrame, tokenizer: Any, max_prompt_length: int, max_length: int) -> pl.DataFrame:
    """pair_id plus prompt_ids, chosen_ids, rejected_ids and `length` (the longer sequence), in input order."""
    encoded = [
        encode_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"], max_prompt_length, max_length)
        for r in df.select(PAIR_COLUMNS).iter_rows(named=True)
    ]
    ids = pl.List(pl.Int64)
    return df.select("pair_id").with_columns(
        pl.Series("prompt_ids", [e["prompt_ids"] for e in encoded], dtype=ids),
        pl.Series("chosen_ids", [e["chosen_ids"] for e in encoded], dtype=ids),
        pl.Series("rejected_ids", [e["rejected_ids"] for e in encoded], dtype=ids),
        pl.Series(
            "length",
            [len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in encoded],
            dtype=pl.Int64,
        ),
    )
