"""The readout gate at answer time: a linear probe on the base model's own hidden states that withholds a request.

`libra probe` showed that a logistic probe on the base model's hidden state, trained on the
training prompts' labels alone, separates the suites' labels better than the DPO policy's
answers do. The gate is that probe, fitted by the `gate` stage (`libra/eval/gate_fit.py`) on
`data/train_dpo.parquet`, never on a suite, and used by the models named `<model>+gate`
(`base+gate`, `dpo+gate`, `dpo~0.5+gate`): a prompt whose score exceeds the policy card's
threshold (`gate.threshold`) gets `GATE_REFUSAL` instead of a generated answer; every other
prompt is answered by `<model>` as usual. With `gate.domain_threshold` set (the chemistry
scope), a prompt is withheld only if the gate's second probe, chemistry prompts against the
general-domain contrast prompts, also scores it above that: the gate then leaves
general-domain requests to `<model>`, whatever words they use.

The probe's features are `features.prompt_features` of the base checkpoint in fp32 (the last
prompt token's state beside the prompt's token mean) at the hidden-state index the gate
stage chose. This module is what the answer stage imports; fitting lives apart, so a change
to the probe's reports or training never reruns an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from libra.errors import InputError
from libra.eval.features import prompt_features

# What a gated model answers to a flagged request: no detail, a reason, and what it can help with.
GATE_REFUSAL = (
    "I can't help with that request: it could lead to serious harm. "
    "I can help with safety information, first aid, detection, or how such risks are regulated instead."
)
GATE_KEYS = frozenset({"probe", "layer", "hidden_states"})


def load_gate(path: str | Path) -> dict[str, Any]:
    import joblib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; run `dvc repro gate` (a +gate model needs the trained gate)")
    try:
        gate = joblib.load(path)
    except Exception as exc:  # a truncated or foreign file: unpickling can fail in many ways
        raise InputError(f"{path} is not a readable libra gate ({type(exc).__name__}); rebuild it with `dvc repro gate`") from exc
    if not isinstance(gate, dict) or not GATE_KEYS <= set(gate):
        raise InputError(f"{path} is not a libra gate (it needs {', '.join(sorted(GATE_KEYS))}); rebuild it with `dvc repro gate`")
    return gate


def gate_of_card(card_path: str | Path | None, model_name: str) -> tuple[Path, float, float | None]:
    """The gate file, threshold and domain threshold (None: any domain) a +gate model's policy card names, the file checked against the card's hash."""
    import json

    from libra.io import sha256_file

    if card_path is None:
        raise InputError(f"{model_name} answers through the readout gate: pass --policy models/policies/{model_name}.json")
    if not Path(card_path).exists():
        raise InputError(f"policy card {card_path} does not exist; run `dvc repro policy@{model_name}`")
    card = json.loads(Path(card_path).read_text())
    if not {"gate", "gate_sha256", "gate_threshold"} <= set(card):
        raise InputError(f"{card_path} names no gate; rerun `dvc repro policy@{model_name}`")
    gate = Path(card["gate"])
    if not gate.exists() or sha256_file(gate) != card["gate_sha256"]:
        raise InputError(f"{gate} is not the gate {card_path} was written for; rerun `dvc repro policy@{model_name}`")
    domain = card.get("gate_domain_threshold")
    return gate, float(card["gate_threshold"]), None if domain is None else float(domain)


def _gate_features(gate: dict[str, Any], base_model: Any, tokenizer: Any, prompts: Sequence[str]) -> np.ndarray:
    n_states = int(base_model.config.num_hidden_layers) + 1
    if gate["hidden_states"] != n_states:
        raise InputError(
            f"the gate was trained on a model with {gate['hidden_states']} hidden states, this base has {n_states}; "
            "rerun `dvc repro gate` on this base model"
        )
    return prompt_features(base_model, tokenizer, list(prompts), layers=[gate["layer"]])[:, 0]


def gate_readings(gate: dict[str, Any], base_model: Any, tokenizer: Any, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Each prompt's decision score under the gate's probe and under its domain probe (None for a gate without one), read off the base checkpoint."""
    features = _gate_features(gate, base_model, tokenizer, prompts)
    domain_probe = gate.get("domain_probe")
    return np.asarray(gate["probe"].decision_function(features)), None if domain_probe is None else np.asarray(domain_probe.decision_function(features))


def gate_flags(
    gate: dict[str, Any], base_model: Any, tokenizer: Any, prompts: Sequence[str], *, threshold: float, domain_threshold: float | None = None
) -> np.ndarray:
    """True for each prompt the gate withholds: its score above `threshold` and, with a domain threshold, its domain score above that."""
    if domain_threshold is not None and gate.get("domain_probe") is None:
        raise InputError("gate.domain_threshold is set but this gate has no domain probe (it was fitted without general-domain prompts, or before the chemistry scope existed); rerun `dvc repro gate`, or set gate.domain_threshold to null")
    scores, domain = gate_readings(gate, base_model, tokenizer, prompts)
    flagged = scores > threshold
    if domain_threshold is not None and domain is not None:
        flagged &= domain > domain_threshold
    return flagged


def gated_texts(texts_for: Callable[[list[str]], list[str]], prompts: Sequence[str], flagged: np.ndarray) -> list[str]:
    """GATE_REFUSAL for flagged prompts; `texts_for(unflagged prompts)` for the rest, in order."""
    keep = [p for p, f in zip(prompts, flagged, strict=True) if not f]
    answered = iter(texts_for(keep) if keep else [])
    return [GATE_REFUSAL if f else next(answered) for f in flagged]
