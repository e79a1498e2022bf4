"""Reference log-probs: the frozen base model's summed log-prob of each completion.

DPO compares the policy to this reference on every step. Computing it once per dataset
(in fp32, no dropout) takes a forward pass off every training step, and a sweep over
beta, learning rate or LoRA settings reuses it, because this stage depends only on the
base model, the pairs and the two length limits.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch


def _pad_batch(seqs: list[list[int]], prompt_lens: list[int], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded input_ids, attention_mask and a completion mask, as TRL's collator builds them."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    completion = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
        completion[i, p : len(s)] = True
    return input_ids, attention, completion


def _summed_logps(model: Any, input_ids: torch.Tensor, attention: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    input_ids, attention, completion = input_ids.to(device), attention.to(device), completion.to(device)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
        # Position t predicts token t+1: score the shifted targets, keep completion tokens only.
        targets = input_ids[:, 1:]
        mask = completion[:, 1:]
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_logps * mask).sum(dim=1).cpu()


def reference_logps(model: Any, encoded: pl.DataFrame, pad_id: int, batch_pairs: int = 8) -> pl.DataFrame:
    """pair_id, ref_chosen_logps, ref_rejected_logps for every encoded pair (input order).

    Pairs are batched by length so padding stays small; each batch holds the chosen and
    the rejected sequence of `batch_pairs` pairs.
    """
    model.eval()
    rows = encoded.with_row_index("_row").sort("length")
    chosen = [0.0] * encoded.height
    rejected = [0.0] * encoded.height
    for start in range(0, rows.height, batch_pairs):
        batch = rows.slice(start, batch_pairs)
        seqs, comp = [], []
        for r in batch.iter_rows(named=True):
            for key in ("chosen_ids", "rejected_ids"):
                seqs.append(list(r["prompt_ids"]) + list(r[key]))
                comp.append(len(r["prompt_ids"]))
        input_ids, attention, completion = _pad_batch(seqs, comp, pad_id)
        logps = _summed_logps(model, input_ids, attention, completion).tolist()
        for j, row in enumerate(batch["_row"].to_list()):
            chosen[row], rejected[row] = logps[2 * j], logps[2 * j + 1]
    return encoded.select("pair_id").with_columns(
        pl.Series("ref_chosen_logps", chosen, dtype=pl.Float64),
        pl.Series("ref_rejected_logps", rejected, dtype=pl.Float64),
    )
