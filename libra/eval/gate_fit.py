"""Fitting the readout gate (`gate` stage): the probe of `libra probe` at one layer, on the training prompts.

The layer is `gate.layer`, or with `auto` the candidate with the best grouped cross-validated
AUC on the training prompts (folds grouped by compound, so a compound is never on both
sides). The suites are never read. The threshold is not part of the gate: the policy card of
each `+gate` model records it (`stages/policy.py`), so moving it reruns only those answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from libra.errors import InputError
from libra.eval.features import prompt_features
from libra.eval.probe import grouped_cv_scores, groups_of, make_probe, rates


def train_gate(
    model: Any, tokenizer: Any, train: pl.DataFrame, *, layer: int | str, C: float, candidates: Sequence[int],
    source: str = "the training pairs",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the gate on `train`'s prompts. Returns (the gate, to save with joblib; its metrics).

    The metrics' cross-validated safety and utility are at score 0, the probe's own boundary
    (`gate.threshold`'s default); AUC holds for every threshold."""
    train = train.unique("prompt", keep="first", maintain_order=True)
    y = (train["label"] == "illegitimate").to_numpy()
    if y.all() or not y.any():
        raise InputError(f"{source}: the gate needs training prompts of both labels (illegitimate and legitimate); rerun `dvc repro augment`")
    n_states = int(model.config.num_hidden_layers) + 1
    layers = [int(layer)] if layer != "auto" else [c for c in candidates if 0 <= c < n_states]
    bad = [v for v in layers if not 0 <= v < n_states]
    if bad or not layers:
        raise InputError(f"gate.layer {layer!r}: the base model has hidden states 0..{n_states - 1} (0 is the embeddings); use auto or one of them")
    features = prompt_features(model, tokenizer, train["prompt"].to_list(), layers=layers)
    groups = groups_of(train)
    scores = {v: grouped_cv_scores(features[:, i], y, groups, C=C, what=source) for i, v in enumerate(layers)}
    cv = {v: rates(scores[v], y) for v in layers}
    chosen = max(layers, key=lambda v: (cv[v]["auc"] or 0.0, -v))
    probe = make_probe(C).fit(features[:, layers.index(chosen)], y)
    gate = {"probe": probe, "layer": chosen, "hidden_states": n_states}
    metrics = {
        "layer": chosen, "layer_param": layer, "C": C, "cv_threshold": 0.0, "train_prompts": train.height,
        "train_illegitimate": int(y.sum()), "train_cv_by_layer": {str(v): cv[v] for v in layers}, "train_cv": cv[chosen],
    }  # fmt: skip
    return gate, metrics


def save_gate(gate: dict[str, Any], path: str | Path) -> None:
    import joblib

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(gate, path)
