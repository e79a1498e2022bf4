"""The readout gate: a linear probe on the base model's own hidden states that withholds a request.

`libra probe` showed that a logistic probe on the base model's hidden state, trained on the
training prompts' labels alone, separates the suites' labels better than the DPO policy's
answers do. The gate is that probe, trained by the `gate` stage on `data/train_dpo.parquet`
(never on a suite) and used at answer time by the models named `<model>+gate`
(`base+gate`, `dpo+gate`, `dpo~0.5+gate`): a prompt the gate flags gets `GATE_REFUSAL`
instead of a generated answer; every other prompt is answered by `<model>` as usual.

The probe's features are `probe.prompt_features` of the base checkpoint (the last prompt
token's state beside the prompts' token mean) at one hidden-state index, chosen by grouped
cross-validated AUC on the training prompts when `gate.layer` is `auto`. A prompt is
flagged when the probe's decision score exceeds `gate.threshold` (0: the balanced
logistic regression's own boundary; higher withholds less).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from libra.config import GATE_SUFFIX
from libra.errors import InputError

# What a gated model answers to a flagged request: no detail, a reason, and what it can help with.
GATE_REFUSAL = (
    "I can't help with that request: it could lead to serious harm. "
    "I can help with safety information, first aid, detection, or how such risks are regulated instead."
)


def split_gate(name: str) -> tuple[str, bool]:
    """`dpo+gate` -> (`dpo`, True); `dpo` -> (`dpo`, False)."""
    if name.endswith(GATE_SUFFIX):
        return name[: -len(GATE_SUFFIX)], True
    return name, False


def train_gate(
    model: Any, tokenizer: Any, train: pl.DataFrame, *, layer: int | str, C: float, threshold: float, candidates: Sequence[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the gate on the training prompts. Returns (the gate, to save with joblib; its metrics)."""
    from libra.eval.probe import grouped_cv_scores, groups_of, make_probe, prompt_features, rates

    train = train.unique("prompt", keep="first", maintain_order=True)
    y = (train["label"] == "illegitimate").to_numpy()
    if y.all() or not y.any():
        raise InputError("the gate needs training prompts of both labels (illegitimate and legitimate)")
    n_states = int(model.config.num_hidden_layers) + 1
    layers = [int(layer)] if layer != "auto" else [c for c in candidates if 0 <= c < n_states]
    bad = [v for v in layers if not 0 <= v < n_states]
    if bad or not layers:
        raise InputError(f"gate.layer {layer!r}: the base model has hidden states 0..{n_states - 1} (0 is the embeddings); use auto or one of them")
    features = prompt_features(model, tokenizer, train["prompt"].to_list())
    groups = groups_of(train)
    cv = {v: rates(grouped_cv_scores(features[:, v], y, groups, C=C), y) for v in layers}
    chosen = max(layers, key=lambda v: (cv[v]["auc"] or 0.0, -v))
    probe = make_probe(C).fit(features[:, chosen], y)
    train_scores = probe.decision_function(features[:, chosen])
    gate = {"probe": probe, "layer": chosen, "threshold": float(threshold), "hidden_states": n_states}
    metrics = {
        "layer": chosen, "layer_param": layer, "C": C, "threshold": float(threshold), "train_prompts": train.height,
        "train_illegitimate": int(y.sum()), "train_cv_by_layer": {str(v): cv[v] for v in layers},
        "train_cv": cv[chosen], "train_flagged_share": round(float((train_scores > threshold).mean()), 3),
    }  # fmt: skip
    return gate, metrics


def save_gate(gate: dict[str, Any], path: str | Path) -> None:
    import joblib

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(gate, path)


def load_gate(path: str | Path) -> dict[str, Any]:
    import joblib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; run `dvc repro gate` (a +gate model needs the trained gate)")
    gate = joblib.load(path)
    if not isinstance(gate, dict) or not {"probe", "layer", "threshold"} <= set(gate):
        raise InputError(f"{path} is not a libra gate (no probe/layer/threshold); rebuild it with `dvc repro gate`")
    return gate


def gate_scores(gate: dict[str, Any], base_model: Any, tokenizer: Any, prompts: Sequence[str]) -> np.ndarray:
    """The probe's decision score of each prompt, read off the base checkpoint."""
    from libra.eval.probe import prompt_features

    n_states = int(base_model.config.num_hidden_layers) + 1
    if gate["hidden_states"] != n_states:
        raise InputError(
            f"the gate was trained on a model with {gate['hidden_states']} hidden states, this base has {n_states}; "
            "rerun `dvc repro gate` on this base model"
        )
    features = prompt_features(base_model, tokenizer, list(prompts), layers=[gate["layer"]])
    return np.asarray(gate["probe"].decision_function(features[:, 0]))


def gated_texts(texts_for: Any, prompts: Sequence[str], flagged: np.ndarray) -> list[str]:
    """GATE_REFUSAL for flagged prompts; `texts_for(unflagged prompts)` for the rest, in order."""
    keep = [p for p, f in zip(prompts, flagged, strict=True) if not f]
    answered = iter(texts_for(keep) if keep else [])
    return [GATE_REFUSAL if f else next(answered) for f in flagged]
