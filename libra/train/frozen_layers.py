"""Decoder layers below the LoRA run once per pair, not once per step.

With `dpo.lora.first_layer` = k > 0 the adapter sits on decoder layers k and up only, so
layers 0..k-1 (and the embeddings) are the frozen base: for a given pair their output
never changes during training. `FrozenLayerStates` runs them once over every training
pair (packed rows, as the step packs them, under `torch.inference_mode`) and keeps the
hidden states that enter layer k; each step then starts its forward there
(`pair_and_token_logps` with `start_hidden`), and its backward stops there.

On SmolLM2-135M (30 layers) with k = 15 a step does about half the matmul work of the
all-layer step; the one-off pass costs about half a reference pass. Memory: every
pair's packed tokens x hidden size x 4 bytes (fp32), printed when the cache is built.

The reference pass (stage ref_logps) runs these same layers over the same packed rows, in
the same batches and precision, so it keeps their output on the way (`capture_layer_input`)
and writes it (`save`, a safetensors file); the dpo stage loads it (`load`, `mismatch`)
instead of running the layers again, and runs them itself only when the file was made for
other pairs, another `first_layer` or another precision.

Works on decoders whose inner model (`model.model`) runs `self.layers` in order and ends
with `self.norm` (Llama, SmolLM2, Qwen2, Mistral). Layers are swapped for the call, not
copied: the parameters, PEFT wrappers and DDP hooks are the same objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from libra.errors import ParamsError
from libra.train.encode import pack_pairs, packed_lengths_of_rows, shared_prefix_length


def inner_decoder(model: Any) -> torch.nn.Module:
    """The decoder stack (`embed_tokens`, `layers`, `norm`) inside a DDP / PEFT / CausalLM wrapper."""
    m = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if hasattr(m, "get_base_model"):  # PEFT
        m = m.get_base_model()
    inner = getattr(m, "model", None)
    if inner is None or not isinstance(getattr(inner, "layers", None), torch.nn.ModuleList) or not hasattr(inner, "norm"):
        raise ParamsError(
            f"params: dpo.lora.first_layer > 0 needs a decoder with model.layers and model.norm; "
            f"{type(m).__name__} has none: set dpo.lora.first_layer to 0"
        )
    return inner


@contextlib.contextmanager
def decoder_span(model: Any, start: int, stop: int | None = None) -> Iterator[None]:
    """For the duration, the model's forward runs decoder layers [start, stop) only.

    Before `stop` the final norm is skipped too, so the forward returns the hidden states
    entering layer `stop`; from `start` > 0 the caller passes those as `inputs_embeds`.
    """
    inner = inner_decoder(model)
    layers, norm = inner.layers, inner.norm
    inner.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if stop is not None and stop < len(layers):
        inner.norm = torch.nn.Identity()
    try:
        yield
    finally:
        inner.layers, inner.norm = layers, norm


def check_frozen_below(model: Any, first_layer: int) -> None:
    """Fail in one line when a trainable parameter sits below `first_layer` (its gradient would be lost)."""
    inner = inner_decoder(model)
    below = [inner.embed_tokens, *list(inner.layers)[:first_layer]]
    for module in below:
        for name, p in module.named_parameters():
            if p.requires_grad:
                raise ParamsError(
                    f"params: dpo.lora.first_layer is {first_layer}, but parameter {name!r} below it is trainable; "
                    "lower dpo.lora.first_layer or narrow dpo.lora.target_modules"
                )


@contextlib.contextmanager
def capture_layer_input(model: Any, layer: int) -> Iterator[list[torch.Tensor]]:
    """For the duration, every forward appends the hidden states entering decoder layer `layer` to the yielded list."""
    layers = inner_decoder(model).layers
    if not 0 < layer < len(layers):
        raise ParamsError(
            f"params: dpo.lora.first_layer is {layer}, but the base model has {len(layers)} decoder layers; "
            f"use 0 (all layers) up to {len(layers) - 1}"
        )
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])

    handle = layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def pair_ids_digest(pair_ids: Sequence[str]) -> str:
    """A short digest of the pairs, in order: a states file is valid only for the same pairs in the same order."""
    return hashlib.sha256("\n".join(pair_ids).encode()).hexdigest()[:16]


@dataclass
class FrozenLayerStates:
    """Every pair's packed-row hidden states entering decoder layer `first_layer`, flat, with row offsets."""

    first_layer: int
    flat: torch.Tensor  # (sum of row lengths, hidden)
    offsets: list[int]  # row i is flat[offsets[i] : offsets[i + 1]]
    seconds: float
    prefix: torch.Tensor | None = None  # (prefix tokens, hidden): the prompts' shared prefix, kept once; rows hold what follows it

    @property
    def prefix_tokens(self) -> int:
        return 0 if self.prefix is None else int(self.prefix.shape[0])

    @property
    def nbytes(self) -> int:
        extra = 0 if self.prefix is None else self.prefix.numel() * self.prefix.element_size()
        return self.flat.numel() * self.flat.element_size() + extra

    @classmethod
    def compute(cls, model: Any, rows: list[dict[str, Any]], pad_id: int, first_layer: int,
                batch_tokens: int = 4096, autocast_bf16: bool = False, share_prefix: bool = True) -> FrozenLayerStates:  # fmt: skip
        """Run layers below `first_layer` once over `rows` (pre-tokenised pairs, dataset order).

        With `share_prefix` the rows' shared prompt prefix runs once per batch and is kept
        once, as the reference pass keeps it.
        """
        from libra.train.ref_logps import hidden_states_as_logits, length_batches, prefix_cache

        check_frozen_below(model, first_layer)
        start = time.perf_counter()
        device = next(model.parameters()).device
        prefix = shared_prefix_length([r["prompt_ids"] for r in rows]) if share_prefix else 0
        lengths = packed_lengths_of_rows(rows, prefix)
        per_row: list[torch.Tensor | None] = [None] * len(rows)
        prefix_state: torch.Tensor | None = None
        was_training = model.training
        model.eval()
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
        with torch.inference_mode(), cast, hidden_states_as_logits(model), decoder_span(model, 0, first_layer):
            for batch in length_batches(lengths, batch_tokens):
                packed = pack_pairs([rows[i] for i in batch], pad_id, prefix)
                cache: dict[str, Any] = {}
                if prefix:
                    cache, prefix_hidden = prefix_cache(model, {"input_ids": packed["prefix_ids"].to(device)}, len(batch))
                    prefix_state = prefix_hidden[0].cpu() if prefix_state is None else prefix_state
                hidden = model(
                    input_ids=packed["input_ids"].to(device), attention_mask=packed["attention_mask"].to(device),
                    position_ids=packed["position_ids"].to(device), use_cache=bool(prefix), **cache,
                ).logits
                for j, i in enumerate(batch):
                    per_row[i] = hidden[j, : lengths[i]].cpu()  # the model's dtype: the upper layers take it as is
        model.train(was_training)
        return cls.from_rows(first_layer, [t for t in per_row if t is not None], time.perf_counter() - start, prefix_state)

    @classmethod
    def from_rows(cls, first_layer: int, per_row: Sequence[torch.Tensor], seconds: float,
                  prefix: torch.Tensor | None = None) -> FrozenLayerStates:  # fmt: skip
        offsets = [0]
        for t in per_row:
            offsets.append(offsets[-1] + t.shape[0])
        flat = torch.cat(list(per_row)) if per_row else torch.zeros(0, 0)
        return cls(first_layer, flat, offsets, seconds, prefix)

    def save(self, path: str | Path, pair_ids: Sequence[str], precision: str) -> None:
        """Write a safetensors file: the states, the row offsets, and what they were made for."""
        from safetensors.torch import save_file

        meta = {"first_layer": str(self.first_layer), "pairs": pair_ids_digest(pair_ids), "precision": precision,
                "seconds": f"{self.seconds:.2f}", "prefix": str(self.prefix_tokens)}  # fmt: skip
        tensors = {"flat": self.flat.contiguous(), "offsets": torch.tensor(self.offsets, dtype=torch.int64)}
        if self.prefix is not None:
            tensors["prefix"] = self.prefix.contiguous()
        tmp = Path(f"{path}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> tuple[FrozenLayerStates, dict[str, str]]:
        """The states in a file `save` wrote, and its metadata (first_layer, pairs digest, precision)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            flat, offsets = f.get_tensor("flat"), f.get_tensor("offsets").tolist()
            prefix = f.get_tensor("prefix") if "prefix" in f.keys() else None
        return cls(int(meta.get("first_layer", 0)), flat, offsets, float(meta.get("seconds", 0.0)), prefix), meta

    def mismatch(self, meta: dict[str, str], first_layer: int, pair_ids: Sequence[str], lengths: Sequence[int],
                 precision: str, prefix: int = 0) -> str | None:  # fmt: skip
        """Why these states cannot stand in for running layers 0..first_layer-1 over these pairs; None when they can.

        `lengths` are the pairs' packed row lengths after a shared prefix of `prefix` tokens.
        """
        if self.first_layer != first_layer:
            return f"made for first_layer {self.first_layer}, not {first_layer}"
        if self.prefix_tokens != prefix:
            return f"made with a shared prompt prefix of {self.prefix_tokens} tokens, not {prefix}"
        if meta.get("precision") != precision:
            return f"made in {meta.get('precision')}, not {precision}"
        if meta.get("pairs") != pair_ids_digest(pair_ids):
            return "made for other pairs"
        if [b - a for a, b in zip(self.offsets, self.offsets[1:], strict=False)] != list(lengths):
            return "made with other token lengths"
        return None

    def batch(self, pair_index: list[int], width: int) -> torch.Tensor:
        """(B, width, hidden) for the packed rows of these pairs, zero at padding (padding attends only to itself)."""
        out = torch.zeros((len(pair_index), width, self.flat.shape[1]), dtype=self.flat.dtype)
        for b, i in enumerate(pair_index):
            row = self.flat[self.offsets[i] : self.offsets[i + 1]]
            out[b, : row.shape[0]] = row
        return out
