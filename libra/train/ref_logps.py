"""Reference log-probs: the frozen base model's summed log-prob of each completion.

DPO compares the policy to this reference on every step. Computing it once per dataset
takes a forward pass off every training step, and a sweep over beta, learning rate or
LoRA settings reuses it, because this stage depends only on the base model, the pairs,
the two length limits and the precision.

The forward is the one the dpo step uses (`pair_logps`): each pair is one packed row
`[prompt; chosen; rejected]` (the prompt computed once, see `encode.pack_pairs`), rows are
grouped by length into batches of about `batch_tokens` tokens, and only the completion
positions go through the 49k-vocabulary LM head. With `capture_layer` = k > 0
(`dpo.lora.first_layer`) the pass also keeps the hidden states entering decoder layer k,
which the dpo stage would otherwise compute again (`frozen_layers.FrozenLayerStates`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import polars as pl
import torch

from libra.train.encode import pack_pairs, packed_lengths, shared_prefix_length
from libra.train.frozen_layers import FrozenLayerStates, capture_layer_input, decoder_span


@contextlib.contextmanager
def hidden_states_as_logits(model: Any) -> Iterator[torch.nn.Module]:
    """Make the model's forward return final hidden states in place of logits; yields the LM head.

    The head runs afterwards on the completion positions only. The forward still goes
    through the (possibly DDP-wrapped) model, so gradient synchronisation is untouched;
    the head is frozen (tied to the embeddings in SmolLM2), so skipping it in the wrapped
    forward loses no gradient.
    """
    inner = model.module if hasattr(model, "module") and not hasattr(model, "get_output_embeddings") else model
    head = inner.get_output_embeddings()
    head.forward = lambda hidden: hidden  # instance attribute: shadows the class method
    try:
        yield head
    finally:
        del head.forward


def _attention_mask(mask: torch.Tensor, model: Any, dtype: torch.dtype) -> torch.Tensor:
    """A boolean (B, 1, L, L) mask in the form the attention implementation takes."""
    config = getattr(model, "config", None) or model.module.config
    if getattr(config, "_attn_implementation", "sdpa") == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def pair_logps(model: Any, packed: dict[str, Any]) -> torch.Tensor:
    """Summed log-probs of every chosen and rejected answer of a packed batch: (2B,) as [c0, r0, c1, r1, ...].

    Differentiable (the dpo step uses it with gradients); call under `torch.inference_mode()`
    for the reference pass.
    """
    return pair_and_token_logps(model, packed)[0]


def pair_and_token_logps(model: Any, packed: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """`pair_logps`, and the log-prob of every completion token (ordered as `packed["target"]`).

    A batch with `start_hidden` (the hidden states entering decoder layer `first_layer`,
    `FrozenLayerStates.batch`) runs layers `first_layer` and up only; with a shared prefix
    (`pack_pairs(..., prefix)`) it also carries `prefix_hidden`, the prefix's states there.
    """
    device = next(model.parameters()).device
    mask = _attention_mask(packed["attention_mask"].to(device), model, torch.float32)
    position_ids = packed["position_ids"].to(device)
    start_hidden = packed.get("start_hidden")
    with contextlib.ExitStack() as stack:
        head = stack.enter_context(hidden_states_as_logits(model))
        if start_hidden is None:
            inputs = {"input_ids": packed["input_ids"].to(device)}
            prefix = {"input_ids": packed["prefix_ids"].to(device)} if packed.get("prefix") else None
        else:  # the frozen layers below first_layer ran once per pair (libra.train.frozen_layers)
            stack.enter_context(decoder_span(model, int(packed["first_layer"])))
            inputs = {"inputs_embeds": start_hidden.to(device)}
            prefix = {"inputs_embeds": packed["prefix_hidden"].to(device)} if packed.get("prefix") else None
        if prefix is not None:
            inputs.update(prefix_cache(model, prefix, rows=position_ids.shape[0])[0])
        hidden = model(**inputs, attention_mask=mask, position_ids=position_ids, use_cache=prefix is not None).logits
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, packed["source"].to(device))
    logits = head(states)  # completion positions only: (tokens, vocab)
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, packed["target"].to(device).unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(packed["num_seqs"], dtype=token_logps.dtype, device=device)
    return out.index_add(0, packed["seq"].to(device), token_logps), token_logps


def prefix_cache(model: Any, prefix: dict[str, torch.Tensor], rows: int) -> tuple[dict[str, Any], torch.Tensor]:
    """The keys and values of a batch's shared prefix, computed once and viewed by every row.

    Runs the prefix (one row: `input_ids` or `inputs_embeds`) through the model's current
    layers with a fresh cache, then expands each layer's cache from 1 row to `rows`
    (a view: no copy; under autograd the rows' gradients sum into the one prefix).
    Returns the model keyword that passes the cache on (`cache`, or `past_key_values`
    before transformers 5.2x), and the prefix forward's output (its `logits`).
    """
    from transformers import DynamicCache

    config = getattr(model, "config", None) or model.module.config
    cache = DynamicCache(config=config)
    length = next(iter(prefix.values())).shape[1]
    device = next(iter(prefix.values())).device
    keyword = cache_keyword(model)
    out = model(**prefix, position_ids=torch.arange(length, device=device)[None], use_cache=True, **{keyword: cache}).logits
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys.expand(rows, -1, -1, -1)
            layer.values = layer.values.expand(rows, -1, -1, -1)
    return {keyword: cache}, out


@functools.cache
def _forward_takes_cache(forward_owner: type) -> bool:
    import inspect

    return "cache" in inspect.signature(forward_owner.forward).parameters


def cache_keyword(model: Any) -> str:
    """transformers 5.2x names the attention cache argument `cache`; earlier releases `past_key_values`."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if hasattr(inner, "get_base_model"):  # PEFT forwards every keyword to the base model
        inner = inner.get_base_model()
    return "cache" if _forward_takes_cache(type(inner)) else "past_key_values"


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Row indices sorted by length, cut into batches of at most `batch_tokens` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending: the newest row is the longest, so it sets the padded width
        if current and (len(current) + 1) * lengths[i] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def reference_logps(
    model: Any, encoded: pl.DataFrame, pad_id: int, batch_tokens: int = 4096, autocast_bf16: bool = False
) -> pl.DataFrame:
    """pair_id, ref_chosen_logps, ref_rejected_logps for every encoded pair (input order).

    `autocast_bf16` runs the matmuls under CPU bfloat16 autocast (only where the CPU runs
    bf16 natively: libra.train.precision decides); the log-softmax stays fp32.
    """
    return reference_pass(model, encoded, pad_id, batch_tokens, autocast_bf16)[0]


def reference_pass(
    model: Any, encoded: pl.DataFrame, pad_id: int, batch_tokens: int = 4096, autocast_bf16: bool = False,
    capture_layer: int = 0, share_prefix: bool = True,
) -> tuple[pl.DataFrame, FrozenLayerStates | None]:  # fmt: skip
    """`reference_logps`, and with `capture_layer` > 0 every pair's hidden states entering that decoder layer.

    The states are those `FrozenLayerStates.compute` gives for the same rows: the same
    packed rows, batches and precision, taken from inside the full forward (so they cost
    no pass of their own: their `seconds` is 0). With `share_prefix` the prompts' shared
    prefix (`encode.shared_prefix_length`) runs once per batch, and the states keep it once.
    """
    model.eval()
    rows = encoded.select("prompt_ids", "chosen_ids", "rejected_ids").to_dicts()
    prefix = shared_prefix_length(encoded["prompt_ids"].to_list()) if share_prefix else 0
    lengths = packed_lengths(encoded, prefix)
    prefix_state: torch.Tensor | None = None
    chosen = [0.0] * len(rows)
    rejected = [0.0] * len(rows)
    per_row: list[torch.Tensor | None] = [None] * len(rows)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
    capture = capture_layer_input(model, capture_layer) if capture_layer > 0 else contextlib.nullcontext([])
    with torch.inference_mode(), cast, capture as captured:
        for batch in length_batches(lengths, batch_tokens):
            logps = pair_logps(model, pack_pairs([rows[i] for i in batch], pad_id, prefix)).float().cpu().tolist()
            for j, i in enumerate(batch):
                chosen[i], rejected[i] = logps[2 * j], logps[2 * j + 1]
                if captured:
                    per_row[i] = captured[-1][j, : lengths[i]].cpu()
            if captured and prefix and prefix_state is None:
                prefix_state = captured[0][0].cpu()  # the prefix's forward ran first; the same in every batch
            captured.clear()
    logps_table = encoded.select("pair_id").with_columns(
        pl.Series("ref_chosen_logps", chosen, dtype=pl.Float64),
        pl.Series("ref_rejected_logps", rejected, dtype=pl.Float64),
    )
    if capture_layer <= 0:
        return logps_table, None
    return logps_table, FrozenLayerStates.from_rows(capture_layer, [t for t in per_row if t is not None], 0.0, prefix_state)
