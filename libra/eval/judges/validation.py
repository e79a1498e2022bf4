"""Leave-one-model-out (LOMO) validation of the judges on XSTest's human labels.

    data = load_xstest(xstest_dir())                      # 3 models x 450 completions
    result = lomo(data, {"rules": fixed(rules_batch), "classifier": fixed(clf.many)}, fusion="vote")
    result["confusion"]                                   # {tp, fn, tn, fp} of the fused judge, held out

The protocol. For each model M in the data, every judge is *developed* on the other models'
completions and *scored* on M's: a builder receives the development rows and returns a
batch judge. A fixed judge (the rules, a classifier trained on project data) ignores them;
a learned judge fits on them. XSTest's three models answered the same 450 prompts, so a
judge fit on two models' answers has seen every held-out prompt's topic; to keep that out,
the held-out rows are cut into `folds` groups by prompt id and each group is judged by a
judge developed on the other models' answers to the *other* prompts (cross-fitting).

The figure that counts is the worst held-out model (`worst_held_out`). Every held-out
prediction comes from a judge that saw neither that model nor that prompt, so the pooled
held-out confusion (`confusion`: positive = withheld) is the judge's honest sensitivity
and specificity, the figures that correct safety and utility for the judge
(`libra.eval.score`, Rogan-Gladen). `full` scores each judge on every row at once, for
comparison with the figures published before this protocol (in-sample for a learned judge).
`changes` counts the rows where the fused verdict differs from each single judge's: a
judge whose presence changes no fused verdict adds nothing to the ensemble.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

from libra.eval.judge import BatchJudge
from libra.eval.judges.fusion import Fusion, fuse
from libra.eval.judges.verdict import Verdict, withheld
from libra.eval.judges.xstest import score

# A builder gets development rows (prompt, response, human, source) and returns a judge.
Builder = Callable[[pl.DataFrame], BatchJudge]
PROTOCOL = (
    "leave one model out on XSTest's human-labelled completions: judges developed on the other models' "
    "answers to other prompts (prompt-grouped cross-fitting), scored on the held-out model; "
    "positive = withheld (refusal or partial_refusal)"
)


def fixed(judge: BatchJudge) -> Builder:
    """A builder for a judge that learns nothing from the development rows."""

    def build(dev: pl.DataFrame) -> BatchJudge:
        return judge

    build.fixed = True  # type: ignore[attr-defined]
    return build


def confusion(human: Sequence[str], predicted: Sequence[str]) -> dict[str, int]:
    """Binary confusion with withheld as positive; an `unparsed` prediction is left out (counted apart)."""
    cells = {"tp": 0, "fn": 0, "tn": 0, "fp": 0}
    for h, p in zip(human, predicted):
        if p == "unparsed":
            continue
        truth, said = withheld(h), withheld(p)
        cells["tp" if truth and said else "fn" if truth else "fp" if said else "tn"] += 1
    return cells


def figures(human: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy (unparsed counted wrong), macro-F1, 3-class accuracy, sensitivity, specificity and their counts."""
    s = score(human, predicted)
    c = confusion(human, predicted)
    pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    return {
        "n": s["n"],
        "accuracy": s["accuracy"],
        "macro_f1": s["macro_f1"],
        "accuracy_3class": s["accuracy_3class"],
        "sensitivity": round(c["tp"] / pos, 4) if pos else None,
        "specificity": round(c["tn"] / neg, 4) if neg else None,
        "unparsed": s["unparsed"],
        "confusion": c,
    }


def _folds(ids: Sequence[str], folds: int) -> list[int]:
    """Fold of each row by prompt id: the same prompt lands in the same fold in every model."""
    order = {pid: k for k, pid in enumerate(sorted(set(ids)))}
    return [order[pid] % folds for pid in ids]


def _run(judges: Mapping[str, BatchJudge], rows: pl.DataFrame, fusion: Fusion) -> dict[str, list[str]]:
    prompts, responses = rows["prompt"].to_list(), rows["response"].to_list()
    verdicts: dict[str, list[Verdict]] = {name: judge(prompts, responses) for name, judge in judges.items()}
    fused = [fuse({n: verdicts[n][i] for n in judges}, fusion) for i in range(rows.height)]
    return {**{n: [v.label for v in vs] for n, vs in verdicts.items()}, "fused": [v.label for v in fused]}


def held_out_predictions(data: pl.DataFrame, builders: Mapping[str, Builder], *, fusion: Fusion, folds: int) -> pl.DataFrame:
    """`data` with one `pred_<judge>` column per judge and `pred_fused`, every one held out."""
    parts: list[pl.DataFrame] = []
    for model in sorted(set(data["source"])):
        test = data.filter(pl.col("source") == model)
        test = test.with_columns(pl.Series("fold", _folds(test["id"].to_list(), folds)))
        dev_all = data.filter(pl.col("source") != model)
        dev_fold = pl.Series(_folds(dev_all["id"].to_list(), folds))
        for k in sorted(set(test["fold"])):
            rows = test.filter(pl.col("fold") == k)
            dev = dev_all.filter(dev_fold != k) if folds > 1 else dev_all
            judges = {name: build(dev) for name, build in builders.items()}
            preds = _run(judges, rows, fusion)
            parts.append(rows.with_columns([pl.Series(f"pred_{n}", v, dtype=pl.String) for n, v in preds.items()]))
    return pl.concat(parts).drop("fold")


def lomo(data: pl.DataFrame, builders: Mapping[str, Builder], *, fusion: Fusion, folds: int = 5) -> dict[str, Any]:
    """The LOMO table (each judge and the fusion, each held-out model), pooled confusion and the full-set figures."""
    names = [*builders, "fused"]
    held = held_out_predictions(data, builders, fusion=fusion, folds=folds)
    human = held["human"].to_list()
    by_model = {
        model: {n: figures(part["human"].to_list(), part[f"pred_{n}"].to_list()) for n in names}
        for model, part in ((m, held.filter(pl.col("source") == m)) for m in sorted(set(held["source"])))
    }
    pooled = {n: figures(human, held[f"pred_{n}"].to_list()) for n in names}
    worst = min(by_model, key=lambda m: by_model[m]["fused"]["accuracy"])
    if all(getattr(build, "fixed", False) for build in builders.values()):
        full = pooled  # a judge that learns nothing gives the same verdicts with or without held-out rows
    else:
        full_preds = _run({name: build(data) for name, build in builders.items()}, data, fusion)
        full = {n: figures(data["human"].to_list(), full_preds[n]) for n in names}
    fused = held["pred_fused"].to_list()
    return {
        "protocol": PROTOCOL,
        "judges": list(builders),
        "fusion": fusion,
        "folds": folds,
        "n": held.height,
        **{k: pooled["fused"][k] for k in ("accuracy", "sensitivity", "specificity", "confusion")},
        "worst_held_out": {"model": worst, "accuracy": by_model[worst]["fused"]["accuracy"]},
        "held_out": by_model,
        "pooled": pooled,
        "full": full,
        "changes": {
            n: {
                "labels": sum(a != b for a, b in zip(fused, held[f"pred_{n}"].to_list())),
                "withheld": sum(withheld(a) != withheld(b) for a, b in zip(fused, held[f"pred_{n}"].to_list())),
            }
            for n in builders
        },
    }
