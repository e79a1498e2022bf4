"""Fitting the readout gate (`gate` stage): the probe of `libra probe` at one layer, on the training prompts.

The layer is `gate.layer`, or with `auto` the candidate with the best grouped cross-validated
AUC on the training prompts (folds grouped by compound, so a compound is never on both
sides). The suites are never read. The threshold is not part of the gate: the policy card of
each `+gate` model records it (`stages/policy.py`), so moving it reruns only those answers.

With `gate.bank_wordings` the probe at that layer is fitted on the training prompts and a
prompt bank (`gate_prompt_bank`): each (compound, task) pair of the training data asked in
that many of its task's nineteen training-only wordings (`templates.training_wordings`),
with the pair's label, and every general-domain contrast prompt
(`contrast.all_contrast_prompts`) as legitimate. The gate reads prompts, not answers, so the
bank costs one forward pass per prompt and no generation. The DPO pairs ask each task in a
few wordings; the bank asks it in all nineteen across the pairs, so the probe learns the
request from what is asked rather than from the shapes it saw. Weights
keep the two labels balanced and give the general-domain prompts `gate.general_share` of the
legitimate side, so the many chemistry prompts do not drown the contrast that keeps
harmless general questions answered.

Beside it, on the same features, a domain probe is fitted: chemistry prompts against the
general-domain ones (class `general`: the contrast prompts). It is read only where
`gate.domain_threshold` is set (the chemistry scope, `libra/eval/gate.py`). With
`gate.domain_framed`, it also reads each (compound, task) pair wrapped in that many of the
training framings (`domain_framed_prompts`: a story, a role, an override, a hypothetical, a
harmless second question) as chemistry, so that a chemistry request keeps reading as
chemistry inside a frame that looks like the general-domain fiction and role prompts. The
gate's own probe does not read them (a framed bank lowered its reading of unseen compounds,
docs/experiments.md e48).

In every cross-validation here a contrast item's framings share a fold (`gate_groups`), as a
compound's prompts do, so no framing of a held-out item is trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from libra.data.framings import KINDS as FRAMING_KINDS
from libra.errors import InputError
from libra.eval.features import prompt_features
from libra.eval.probe import fit_probe, grouped_cv_scores, groups_of, rates

GENERAL = "general"


def gate_prompt_bank(train: pl.DataFrame, wordings: int) -> pl.DataFrame:
    """Prompts for the gate beyond the training pairs: (prompt, label, compound_id, class), none of them in `train`.

    Each (compound, task) pair of `train` is asked in `wordings` training-only wordings of its
    task, with the pair's own label, rotated from one pair to the next so that every wording is
    used; every contrast prompt is added as a legitimate general-domain prompt. Only pairs the
    training data already hold are asked: asking a training compound a task it was not trained
    on would put the seen-compound partition's (compound, task) pairs into the gate's data."""
    from libra.data.contrast import all_contrast_prompts
    from libra.data.templates import training_wordings

    rows: list[dict[str, Any]] = []
    for i, pair in enumerate(chemistry_pairs(train).iter_rows(named=True)):
        pool = training_wordings(pair["task"])
        for r in range(min(wordings, len(pool))):
            prompt = pool[(i * wordings + r) % len(pool)].format(compound=pair["compound"])
            rows.append({"prompt": prompt, "label": pair["label"], "compound_id": pair["compound_id"], "class": pair["class"]})
    rows += [{"prompt": r["prompt"], "label": "legitimate", "compound_id": None, "class": GENERAL} for r in all_contrast_prompts()]
    schema = {"prompt": pl.String, "label": pl.String, "compound_id": pl.String, "class": pl.String}
    bank = pl.DataFrame(rows, schema=schema).unique("prompt", keep="first", maintain_order=True)
    return bank.filter(~pl.col("prompt").is_in(train["prompt"].implode()))


# The training framings but the identifier renaming, which needs a SMILES or CAS number and is not a frame.
DOMAIN_FRAMINGS: tuple[str, ...] = tuple(k for k in FRAMING_KINDS if k != "identifier")


def chemistry_pairs(train: pl.DataFrame) -> pl.DataFrame:
    """The (compound, task) pairs of the training data (compound, compound_id, class, task, label), in order of first appearance."""
    from libra.data.templates import TASK_PROMPTS

    if not {"compound", "compound_id", "class", "task"} <= set(train.columns):
        return pl.DataFrame(schema={"compound": pl.String, "compound_id": pl.String, "class": pl.String, "task": pl.String, "label": pl.String})
    chemistry = train.filter(pl.col("compound_id").is_not_null() & pl.col("compound").is_not_null() & pl.col("task").is_in(list(TASK_PROMPTS)))
    return chemistry.unique(["compound_id", "task"], keep="first", maintain_order=True).select("compound", "compound_id", "class", "task", "label")


def domain_framed_prompts(train: pl.DataFrame, framings: int) -> pl.DataFrame:
    """(prompt, compound_id): each (compound, task) pair of `train` in a training wording, wrapped in `framings` training framings.

    The framing kinds and the wordings rotate from pair to pair; a framing's template is picked
    by the pair (`libra/data/framings.py`, training-only templates). Prompts `train` holds are left out."""
    from libra.data.framings import framed_prompt
    from libra.data.templates import training_wordings

    rows: list[dict[str, Any]] = []
    for i, pair in enumerate(chemistry_pairs(train).iter_rows(named=True)):
        pool = training_wordings(pair["task"])
        for r in range(min(framings, len(DOMAIN_FRAMINGS))):
            k = i * framings + r
            request = {"prompt": pool[k % len(pool)].format(compound=pair["compound"]), "seed_id": f"{pair['compound_id']}:{pair['task']}:{k}"}
            prompt = framed_prompt(DOMAIN_FRAMINGS[k % len(DOMAIN_FRAMINGS)], request, None, None)
            rows.append({"prompt": prompt, "compound_id": pair["compound_id"]})
    framed = pl.DataFrame(rows, schema={"prompt": pl.String, "compound_id": pl.String}).unique("prompt", keep="first", maintain_order=True)
    return framed.filter(~pl.col("prompt").is_in(train["prompt"].implode()))


def gate_groups(df: pl.DataFrame) -> list[str]:
    """CV groups: a compound's id; for a general-domain contrast prompt, its contrast item (all its framings); else the prompt."""
    from libra.data.contrast import all_contrast_prompts

    item_of = {r["prompt"]: r["item"] for r in all_contrast_prompts()}
    groups = []
    for group in groups_of(df):
        prompt = group.removeprefix("prompt:")
        groups.append(f"contrast:{item_of[prompt]}" if group.startswith("prompt:") and prompt in item_of else group)
    return groups


def is_general(df: pl.DataFrame) -> np.ndarray:
    """True for general-domain rows (class 'general'); a missing or null class is not general."""
    if "class" not in df.columns:
        return np.zeros(df.height, bool)
    return df.select((pl.col("class").cast(pl.String) == GENERAL).fill_null(False)).to_series().to_numpy()


def gate_weights(y: np.ndarray, general: np.ndarray, general_share: float) -> np.ndarray:
    """Per-prompt weights, mean 1: each label carries half; general-domain prompts carry `general_share` of the legitimate half.

    Where the legitimate side has only general-domain or only chemistry prompts, its half is
    spread evenly over them. The weights apply with or without a bank (gate.bank_wordings 0:
    the training prompts alone, their own general-domain rows weighted the same way)."""
    weights = np.where(y, 0.5 / max(int(y.sum()), 1), 0.5 / max(int((~y).sum()), 1))
    legit_general, legit_chem = ~y & general, ~y & ~general
    if legit_general.any() and legit_chem.any() and 0.0 < general_share < 1.0:
        weights[legit_general] = general_share * 0.5 / legit_general.sum()
        weights[legit_chem] = (1.0 - general_share) * 0.5 / legit_chem.sum()
    return weights / weights.mean()


def train_gate(
    model: Any, tokenizer: Any, train: pl.DataFrame, *, layer: int | str, C: float, candidates: Sequence[int],
    source: str = "the training pairs", bank: pl.DataFrame | None = None, general_share: float = 0.25,
    domain_framed: pl.DataFrame | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the gate on `train`'s prompts, and `bank`'s where given. Returns (the gate, to save with joblib; its metrics).

    The layer is chosen on `train` alone. The metrics' cross-validated safety and utility
    are at score 0, the probe's own boundary (`gate.threshold`'s default); AUC holds for
    every threshold. `fit_cv` cross-validates the fitted recipe (training prompts and bank,
    weighted, folds grouped by compound) and scores it on the training prompts; `domain_cv`
    cross-validates the domain probe on the same rows."""
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
    groups = gate_groups(train)
    scores = {v: grouped_cv_scores(features[:, i], y, groups, C=C, what=source) for i, v in enumerate(layers)}
    cv = {v: rates(scores[v], y) for v in layers}
    chosen = max(layers, key=lambda v: (cv[v]["auc"] or 0.0, -v))

    x = features[:, layers.index(chosen)]
    general = is_general(train)
    fit_groups = list(groups)
    bank = bank if bank is not None else pl.DataFrame()
    if bank.height:
        x = np.concatenate([x, prompt_features(model, tokenizer, bank["prompt"].to_list(), layers=[chosen])[:, 0]])
        y = np.concatenate([y, (bank["label"] == "illegitimate").to_numpy()])
        general = np.concatenate([general, is_general(bank)])
        fit_groups += gate_groups(bank)
    weights = gate_weights(y, general, general_share)
    probe = fit_probe(x, y, C, weights)
    chemistry, domain_x, domain_groups = ~general, x, fit_groups
    if domain_framed is not None and domain_framed.height and general.any():
        domain_x = np.concatenate([x, prompt_features(model, tokenizer, domain_framed["prompt"].to_list(), layers=[chosen])[:, 0]])
        chemistry = np.concatenate([chemistry, np.ones(domain_framed.height, bool)])
        domain_groups = fit_groups + groups_of(domain_framed)
    domain_probe = fit_probe(domain_x, chemistry, C) if general.any() and chemistry.any() else None
    gate = {"probe": probe, "domain_probe": domain_probe, "layer": chosen, "hidden_states": n_states}
    metrics = {
        "layer": chosen, "layer_param": layer, "C": C, "cv_threshold": 0.0, "train_prompts": train.height,
        "train_illegitimate": int(y[: train.height].sum()), "train_cv_by_layer": {str(v): cv[v] for v in layers}, "train_cv": cv[chosen],
        "bank_prompts": bank.height, "bank_illegitimate": int(y[train.height :].sum()), "bank_general": int(general[train.height :].sum()),
        "general_share": general_share, "domain_framed": len(domain_x) - len(x),
    }  # fmt: skip
    if bank.height:
        fit_scores = grouped_cv_scores(x, y, fit_groups, C=C, what=source, weights=weights)
        metrics["fit_cv"] = rates(fit_scores[: train.height], y[: train.height])
    if domain_probe is not None:
        # safety here: chemistry prompts read as chemistry; utility: general-domain prompts read as general
        metrics["domain_cv"] = rates(grouped_cv_scores(domain_x, chemistry, domain_groups, C=C, what=source), chemistry)
    return gate, metrics


def save_gate(gate: dict[str, Any], path: str | Path) -> None:
    import joblib

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(gate, path)
