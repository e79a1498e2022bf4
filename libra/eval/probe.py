"""How far a linear readout of the policy's own representations separates the suite's labels.

`libra probe` answers, in about a minute on a CPU and before any DPO step, two questions
about a model (the base checkpoint, or it with an adapter) and a training set:

- **transfer**: a logistic probe trained on the training prompts' labels (illegitimate or
  legitimate, `data/train_dpo.parquet`), read at each layer, then applied to each suite
  partition at the probe's own threshold. Its safety (illegitimate prompts it flags) and
  utility (legitimate prompts it passes) are what a policy that decided by a linear
  reading of that layer, learnt from these training prompts alone, would reach. AUC is
  the same reading without a threshold.
- **ceiling**: the same probe trained inside the suite by 5-fold cross-validation, folds
  grouped by compound so that no compound is in both halves: what the layer holds about
  the labels when the training prompts are worded like the evaluation's own. A goal above
  it asks the policy for a distinction its representations do not hold linearly.

The feature of a prompt at a layer is its chat-templated last token's hidden state (where
the first answer token is decided) beside the mean over its tokens. The layer reported in
`chosen_layer` is chosen by grouped cross-validated AUC on the training prompts, never on a
suite, so the summary is not tuned to the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from libra.errors import InputError
from libra.eval.features import prompt_features

LABELS = ("illegitimate", "legitimate")
FOLDS = 5


def read_labelled(path: Path, what: str) -> pl.DataFrame:
    """Prompts with a label column; one line naming the file and the problem otherwise."""
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; run `dvc repro` first, or pass the path of a parquet file")
    df = pl.read_parquet(path)
    for col in ("prompt", "label"):
        if col not in df.columns:
            raise InputError(f"{what} {path} has no '{col}' column (it has {', '.join(df.columns)}); a probe needs prompt and label")
    bad = df.filter(pl.col("label").is_null() | ~pl.col("label").is_in(LABELS) | pl.col("prompt").is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise InputError(
            f"{what} {path}: {bad.height} rows have no prompt or a label outside {'/'.join(LABELS)}, "
            f"e.g. label {row['label']!r} for prompt {str(row['prompt'])[:60]!r}; fix or drop them"
        )
    return df


PROBE_C = 0.05


def make_probe(C: float = PROBE_C, *, balanced: bool = True) -> Any:
    """Standardised features, then an L2 logistic regression, class-balanced unless `balanced` is False (for callers that weight the samples themselves)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Strong L2 by default: a few hundred prompts against 2 x hidden features.
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced" if balanced else None))


def fit_probe(x: np.ndarray, y: np.ndarray, C: float = PROBE_C, weights: np.ndarray | None = None) -> Any:
    """`make_probe` fitted: class-balanced, or with the given per-sample `weights` in place of the balancing."""
    if weights is None:
        return make_probe(C).fit(x, y)
    return make_probe(C, balanced=False).fit(x, y, logisticregression__sample_weight=weights)


def grouped_cv_scores(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str], C: float = PROBE_C, *, what: str = "the prompts", weights: np.ndarray | None = None
) -> np.ndarray:
    """Out-of-fold decision scores, folds grouped so a group is never on both sides (fitted with `weights` where given)."""
    from sklearn.model_selection import GroupKFold

    folds = min(FOLDS, len(set(groups)))
    if folds < 2 or len(set(y.tolist())) < 2:
        raise InputError(
            f"{what}: a probe needs prompts of both labels (illegitimate and legitimate) from at least two compounds "
            "or prompts to cross-validate; add prompts of the missing label"
        )
    scores = np.zeros(len(y))
    for train, held in GroupKFold(folds).split(x, y, list(groups)):
        if len(set(y[train].tolist())) < 2:
            scores[held] = 0.0
            continue
        probe = fit_probe(x[train], y[train], C, None if weights is None else weights[train])
        scores[held] = probe.decision_function(x[held])
    return scores


def rates(scores: np.ndarray, y: np.ndarray) -> dict[str, float | int | None]:
    """Safety (illegitimate flagged: score > 0), utility (legitimate passed) at the probe's own boundary, and AUC."""
    from sklearn.metrics import roc_auc_score

    ill, leg = y, ~y
    return {
        "safety": round(float((scores[ill] > 0).mean()), 3) if ill.any() else None,
        "utility": round(float((scores[leg] <= 0).mean()), 3) if leg.any() else None,
        "auc": round(float(roc_auc_score(y, scores)), 3) if ill.any() and leg.any() else None,
        "n": int(len(y)),
    }


def groups_of(df: pl.DataFrame) -> list[str]:
    """A compound's id where the row has one, else the row's own prompt (its own group)."""
    ids = df["compound_id"].to_list() if "compound_id" in df.columns else [None] * df.height
    return [str(c) if c else f"prompt:{p}" for c, p in zip(ids, df["prompt"].to_list(), strict=True)]


def probe_report(
    train: pl.DataFrame,
    train_x: np.ndarray,
    suites: dict[str, tuple[pl.DataFrame, np.ndarray]],
    layers: Sequence[int],
) -> dict[str, Any]:
    """Per layer: training CV AUC; per suite and partition: transfer and ceiling rates."""
    y_train = (train["label"] == "illegitimate").to_numpy()
    train_groups = groups_of(train)
    result: dict[str, Any] = {"train_prompts": train.height, "layers": {}}
    for layer in layers:
        cv = rates(grouped_cv_scores(train_x[:, layer], y_train, train_groups, what="the training prompts"), y_train)
        probe = fit_probe(train_x[:, layer], y_train)
        entry: dict[str, Any] = {"train_cv": cv, "suites": {}}
        for name, (df, x) in suites.items():
            y = (df["label"] == "illegitimate").to_numpy()
            transfer = probe.decision_function(x[:, layer])
            ceiling = grouped_cv_scores(x[:, layer], y, groups_of(df), what=f"suite {name}")
            parts = df["partition"].fill_null("all").to_list() if "partition" in df.columns else ["all"] * df.height
            by_part: dict[str, Any] = {}
            for part in ["all", *sorted(set(parts) - {"all"})]:
                m = np.ones(len(y), bool) if part == "all" else np.array([p == part for p in parts])
                by_part[part] = {"transfer": rates(transfer[m], y[m]), "ceiling": rates(ceiling[m], y[m])}
            entry["suites"][name] = by_part
        result["layers"][str(layer)] = entry
    auc = {k: v["train_cv"]["auc"] or 0.0 for k, v in result["layers"].items()}
    result["chosen_layer"] = max(auc, key=lambda k: auc[k])
    return result


def default_layers(n_layers: int) -> list[int]:
    """Every fourth hidden state from the fourth, and the last (hidden_states has n_layers + 1)."""
    return sorted({*range(min(4, n_layers), n_layers + 1, 4), n_layers})


def run_probe(
    base: Path, train_path: Path, suite_paths: Sequence[Path], *, adapter: Path | None = None, layers: Sequence[int] | None = None
) -> dict[str, Any]:
    """Load the model once, read every prompt's features, and report (see the module docstring)."""
    from libra.eval.answer import load_policy

    train = read_labelled(train_path, "training pairs").unique("prompt", keep="first", maintain_order=True)
    suites_df = {p.stem: read_labelled(p, "suite") for p in suite_paths}
    model, tokenizer = load_policy(base, adapter)
    n_layers = int(model.config.num_hidden_layers)
    chosen = list(layers) if layers else default_layers(n_layers)
    bad = [layer for layer in chosen if not 0 <= layer <= n_layers]
    if bad:
        raise InputError(f"--layers {bad}: the model has hidden states 0..{n_layers} (0 is the embeddings)")
    train_x = prompt_features(model, tokenizer, train["prompt"].to_list())
    suites = {name: (df, prompt_features(model, tokenizer, df["prompt"].to_list())) for name, df in suites_df.items()}
    report = probe_report(train, train_x, suites, chosen)
    report["model"] = {"base": str(base), "adapter": str(adapter) if adapter else None, "hidden_states": n_layers + 1}
    report["train_path"] = str(train_path)
    return report


def probe_markdown(report: dict[str, Any]) -> str:
    """One table: suite, partition, layer; transfer and ceiling safety / utility (AUC)."""

    def cell(r: dict[str, Any]) -> str:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        return f"{fmt(r['safety'])} / {fmt(r['utility'])} ({fmt(r['auc'])})"

    lines = [
        f"Linear probe of {report['model']['base']}" + (f" + {report['model']['adapter']}" if report["model"]["adapter"] else "")
        + f", trained on {report['train_prompts']} training prompts; chosen layer {report['chosen_layer']} (by training CV AUC).",
        "",
        "| suite | partition | layer | train CV AUC | transfer safety / utility (AUC) | ceiling safety / utility (AUC) |",
        "|---|---|---|---|---|---|",
    ]
    for layer, entry in report["layers"].items():
        mark = " *" if layer == report["chosen_layer"] else ""
        for suite, parts in entry["suites"].items():
            for part, r in parts.items():
                auc = entry["train_cv"]["auc"]
                lines.append(f"| {suite} | {part} | {layer}{mark} | {auc:.2f} | {cell(r['transfer'])} | {cell(r['ceiling'])} |")
    return "\n".join(lines) + "\n"
