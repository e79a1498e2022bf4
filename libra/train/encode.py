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

from collections.abc import Sequence
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


def packed_lengths(encoded: pl.DataFrame, prefix: int = 0) -> list[int]:
    """Tokens of each pair's packed row `[prompt; chosen; rejected]` (`pack_pairs`), in input order.

    With `prefix` > 0 the row holds only what follows the shared prefix (`pack_pairs(..., prefix)`).
    """
    return packed_lengths_of_rows(encoded.select("prompt_ids", "chosen_ids", "rejected_ids").to_dicts(), prefix)


def packed_lengths_of_rows(rows: Sequence[dict[str, Any]], prefix: int = 0) -> list[int]:
    """`packed_lengths` of pre-tokenised rows (dicts with prompt_ids, chosen_ids, rejected_ids)."""
    return [len(r["prompt_ids"]) - prefix + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows]


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens that every prompt starts with, leaving each prompt at least one token of its own.

    With SmolLM2's template that is the default system turn and the user header (most of
    a short prompt's tokens), the same for every pair; `pack_pairs` computes it once per
    batch instead of once per pair. Prompts cut by `max_prompt_length` (which keeps their
    end) may share none, and then this is 0.
    """
    if not prompts:
        return 0
    first = list(prompts[0])
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        if n <= 0:
            return 0
        n = min(n, _common_prefix(first, list(p)))
    return max(n, 0)


def pack_pairs(pairs: list[dict[str, Any]], pad_id: int, prefix: int = 0) -> dict[str, Any]:
    """One row per pair, `[prompt; chosen; rejected]`, the prompt computed once for both answers.

    Rejected tokens take the positions the chosen ones have (both follow the prompt) and
    attend to the prompt and to themselves, never to the chosen answer, so every token
    sees exactly the context it has in its own `[prompt; answer]` sequence: the same
    log-probs with the prompt's forward (and backward) done once instead of twice. Rows
    are right-padded to the longest in the batch; padding attends only to itself (no
    fully masked row, so no NaN).

    Returns input_ids and position_ids (B, L), a boolean attention mask (B, 1, L, L, True
    = may attend), and for the completion tokens flat indices `source` (the position whose
    output predicts the token), `target` (the token) and `seq` (2b for pair b's chosen,
    2b + 1 for its rejected answer) and `offset` (the token's index within its answer, 0
    for the first); `tokens` counts chosen + rejected sequence tokens as unpacked
    `[prompt; answer]` rows would have them.

    With `prefix` > 0 (`shared_prefix_length`: the first `prefix` prompt tokens are the same
    in every pair) the rows hold what follows it, at positions `prefix` and up, and
    `prefix_ids` (1, prefix) runs once for the batch: the mask is then (B, 1, L, prefix +
    L), every real token also attending to the prefix (`ref_logps.pair_and_token_logps`
    passes the prefix's keys and values as the attention cache). Same log-probs, up to
    float rounding, with the prefix's forward and backward done once per batch.
    """
    import torch

    shared = list(pairs[0]["prompt_ids"][:prefix])
    for p in pairs:
        if len(p["prompt_ids"]) <= prefix or list(p["prompt_ids"][:prefix]) != shared:
            raise ValueError(f"pack_pairs: every prompt must start with the same {prefix} tokens and go on past them")
    width = max(len(p["prompt_ids"]) - prefix + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
    n = len(pairs)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, 1, width, prefix + width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    source, target, seq, offset = [], [], [], []
    tokens = 0
    for b, p in enumerate(pairs):
        prompt, chosen, rejected = list(p["prompt_ids"][prefix:]), list(p["chosen_ids"]), list(p["rejected_ids"])
        np_, nc, nr = len(prompt), len(chosen), len(rejected)
        end = np_ + nc + nr
        input_ids[b, :end] = torch.tensor(prompt + chosen + rejected)
        position_ids[b, : np_ + nc] = torch.arange(prefix, prefix + np_ + nc)
        position_ids[b, np_ + nc : end] = torch.arange(prefix + np_, prefix + np_ + nr)
        position_ids[b, end:] = torch.arange(prefix, prefix + width - end)
        mask[b, 0, :end, :prefix] = True
        own = mask[b, 0, :, prefix:]  # a view: the row's own tokens
        own[:end, :end] = causal[:end, :end]
        own[np_ + nc : end, np_ : np_ + nc] = False  # rejected never sees chosen
        pad = torch.arange(end, width)
        own[pad, pad] = True
        row = b * width
        # Chosen token at np_ + i is predicted by position np_ + i - 1; the first rejected
        # token by the prompt's last position, the others by the rejected token before.
        source += [row + np_ - 1 + i for i in range(nc)]
        source += [row + np_ - 1] + [row + np_ + nc + i for i in range(nr - 1)]
        target += chosen + rejected
        seq += [2 * b] * nc + [2 * b + 1] * nr
        offset += list(range(nc)) + list(range(nr))
        tokens += 2 * (prefix + np_) + nc + nr
    packed: dict[str, Any] = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask,
        "source": torch.tensor(source, dtype=torch.long),
        "target": torch.tensor(target, dtype=torch.long),
        "seq": torch.tensor(seq, dtype=torch.long),
        "offset": torch.tensor(offset, dtype=torch.long),
        "num_seqs": 2 * n,
        "tokens": tokens,
        "prefix": prefix,
    }
    if prefix:
        packed["prefix_ids"] = torch.tensor([shared], dtype=torch.long)
    return packed
