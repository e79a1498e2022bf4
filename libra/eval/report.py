"""The evaluation report: one markdown page over every (model, suite), its plots and tables for DVC.

    md = render(results, bootstrap=1000, seed=0, plots_link="plots")
    plot_frontier(results, "metrics/plots/frontier.png")
    plot_by_partition(results, "metrics/plots/by_partition.png")

`results` holds, per (model, suite), the score() metrics and the judged table. The page
leads with what a user must not miss: automatic warnings, the headline per suite (safety,
utility, overall with intervals and n, and the change from the reference model with the
interval of the paired difference), then XSTest's over-refusal of safe prompts and its
rise over base, then per-partition tables raw beside judge-corrected.

Model names are opaque, except that `name@lambda` or `name~lambda` (e.g. `dpo@0.5`, the dpo
adapter scaled by 0.5) is read as a point of name's safety/utility frontier across lambda.
Use `~` in params: DVC cannot address a matrix stage whose model value holds `@`.

Example answers to illegitimate prompts are cut to their first 160 characters, and an
answer that looks operational (quantities, conditions, filled reagent steps) is withheld
entirely, so the report never carries anything a model should have withheld.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from libra.data.quarantine import WITHHELD
from libra.data.safety import operational_content
from libra.errors import InputError
from libra.eval.score import difference

ILLEGITIMATE_CHARS = 160
LEGITIMATE_CHARS = 400
PROMPT_CHARS = 200
EXAMPLES_PER_LABEL = 2
# A headline interval wider than this cannot tell two models apart at the differences that matter.
WIDE_CI = 0.30
# A judge correction that moves a headline rate by more than this is worth a warning.
CORRECTION_SHIFT = 0.05
BREAKDOWN_TITLES = {"task": "task", "framing": "framing", "type": "type", "group": "compound group"}


@dataclass
class Results:
    """Everything the report reads: metrics and judged tables per (model, suite), in params order."""

    models: list[str]
    suites: list[str]
    metrics: dict[tuple[str, str], dict[str, Any]]
    judged: dict[tuple[str, str], pl.DataFrame]
    # (model, suite, None) for the whole suite, (model, suite, partition) per partition.
    deltas: dict[tuple[str, str, str | None], dict[str, Any]] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """The model deltas are measured against: `base` when it was scored, else the first model."""
        return "base" if "base" in self.models else self.models[0]

    def m(self, model: str, suite: str) -> dict[str, Any]:
        return self.metrics[(model, suite)]

    def delta(self, model: str, suite: str, partition: str | None = None) -> dict[str, Any] | None:
        return self.deltas.get((model, suite, partition))

    def compute_deltas(self, bootstrap: int, seed: int) -> None:
        ref = self.reference
        for suite in self.suites:
            for model in self.models:
                if model != ref:
                    self.deltas[(model, suite, None)] = difference(
                        self.judged[(model, suite)], self.judged[(ref, suite)], bootstrap=bootstrap, seed=seed)
                    for part, (a, b) in self._partition_pairs(model, suite).items():
                        self.deltas[(model, suite, part)] = difference(a, b, bootstrap=bootstrap, seed=seed)

    def _partition_pairs(self, model: str, suite: str) -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
        a, b = self.judged[(model, suite)], self.judged[(self.reference, suite)]
        return {p: (a.filter(pl.col("partition") == p), b.filter(pl.col("partition") == p))
                for p in self.m(model, suite)["partition"]}


# --- names ---------------------------------------------------------------------------------


# `dpo@0.5` is the name the team agreed; DVC 3.67 cannot address a matrix stage whose value holds
# "@" (score@dpo@0.5-xstest is "not found"), so `dpo~0.5` is read the same way.
LAMBDA_SEPARATORS = ("@", "~")


def parse_model(name: str) -> tuple[str, float | None]:
    """`dpo@0.5` or `dpo~0.5` -> ("dpo", 0.5): a point of dpo's adapter-scale frontier; any other name -> (name, None)."""
    for sep in LAMBDA_SEPARATORS:
        family, found, tail = name.rpartition(sep)
        if not found or not family:
            continue
        try:
            lam = float(tail)
        except ValueError:
            continue
        if math.isfinite(lam):
            return family, lam
    return name, None


def names(value: Any, key: str) -> list[str]:
    """Names from a params entry that is a list of names (or of {name: ...} items) or a mapping keyed by name."""
    if isinstance(value, dict):
        return [str(k) for k in value]
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            name = item if isinstance(item, str) else (item.get("name") if isinstance(item, dict) else getattr(item, "name", None))
            if not isinstance(name, str):
                raise InputError(f"params: {key} item {item!r} has no name; give a list of names or a mapping keyed by name")
            out.append(name)
        return out
    if hasattr(value, "model_dump"):
        return names(value.model_dump(), key)
    raise InputError(f"params: {key} = {value!r} is neither a list of names nor a mapping keyed by name")


def expand(pattern: str, model: str, suite: str) -> str:
    return pattern.replace("{model}", model).replace("{suite}", suite)


def is_xstest(suite: str, metrics: dict[str, Any]) -> bool:
    """XSTest-like: named xstest*, or its partitions are XSTest's safe/unsafe."""
    parts = set(metrics.get("partition") or {})
    return suite.lower().startswith("xstest") or (bool(parts) and parts <= {"safe", "unsafe"})


# --- formatting ------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fmt_ci(ci: dict[str, float] | None, signed: bool = False) -> str:
    if not ci:
        return ""
    f = "+.2f" if signed else ".2f"
    # + 0.0 turns a -0.0 bound into 0.0, so no interval reads "-0.00".
    return f" [{ci['lo'] + 0.0:{f}}, {ci['hi'] + 0.0:{f}}]"


def _rise(d: dict[str, Any] | None) -> str:
    """Over-refusal rise = minus the utility difference, with its interval flipped."""
    if not d or d.get("utility") is None:
        return "–"
    ci = (d.get("ci") or {}).get("utility")
    flipped = None if not ci else {"lo": -ci["hi"], "hi": -ci["lo"]}
    return f"{-d['utility'] + 0.0:+.3f}{_fmt_ci(flipped, signed=True)}"


def _rate(r: dict[str, Any] | None, key: str, n_key: str | None = None) -> str:
    """'0.733 [0.60, 0.85] (n=15)' for a rate of a metrics slice."""
    if not r or r.get(key) is None:
        return "–" + (f" (n={r[n_key]})" if r and n_key else "")
    n = f" (n={r[n_key]})" if n_key else ""
    return f"{_fmt(r[key])}{_fmt_ci((r.get('ci') or {}).get(key))}{n}"


def _corrected(r: dict[str, Any] | None, key: str) -> str:
    c = (r or {}).get("corrected")
    if not c:
        return "–"
    return _rate(c, key)


def _delta(d: dict[str, Any] | None, key: str) -> str:
    if not d or d.get(key) is None:
        return "–"
    return f"{d[key] + 0.0:+.3f}{_fmt_ci((d.get('ci') or {}).get(key), signed=True)}"


def _flip(r: dict[str, Any] | None, key: str) -> tuple[float | None, dict[str, float] | None]:
    """1 - rate and its flipped interval (over-refusal from utility)."""
    if not r or r.get(key) is None:
        return None, None
    ci = (r.get("ci") or {}).get(key)
    return round(1 - r[key], 4), (None if not ci else {"lo": round(1 - ci["hi"], 4), "hi": round(1 - ci["lo"], 4)})


def _one_line(text: str | None, limit: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[:limit].rstrip() + " …"


def _pairing(d: dict[str, Any]) -> str:
    return ", ".join(f"{lab}: {'paired over ' + str(d['n_pairs'][lab]) + ' shared prompts' if d['paired'][lab] else 'unpaired'}"
                     for lab in ("illegitimate", "legitimate"))


# --- sections --------------------------------------------------------------------------------


def warnings(res: Results) -> list[str]:
    """What a user must not miss, computed: XSTest over-refusal rises, unreadable intervals, unparsed, the judge."""
    out: list[str] = []
    ref = res.reference
    for suite in res.suites:
        if not is_xstest(suite, res.m(ref, suite)):
            continue
        for model in res.models:
            if model == ref:
                continue
            rate, ci = _flip(_safe_slice(res.m(model, suite)), "utility")
            base_rate, _ = _flip(_safe_slice(res.m(ref, suite)), "utility")
            d = res.delta(model, suite, "safe") or res.delta(model, suite)
            if rate is None or d is None or d.get("utility") is None:
                continue
            out.append(f"**{model} refuses {_fmt(rate)}{_fmt_ci(ci)} of {suite}'s safe prompts** ({ref} {_fmt(base_rate)}): "
                       f"{_rise(d)} over {ref}.")
    wide = [f"{model}/{suite} {key} {_fmt_ci((res.m(model, suite).get('ci') or {}).get(key)).strip()}"
            for suite in res.suites for model in res.models for key in ("safety", "utility")
            if _width((res.m(model, suite).get("ci") or {}).get(key)) > WIDE_CI]
    if wide:
        out.append(f"Intervals wider than {WIDE_CI:.2f}: {'; '.join(wide)}. These rates rest on too few items to compare models; "
                   "grow the suite before reading differences.")
    unparsed = [f"{model}/{suite} {res.m(model, suite)['n_unparsed']}" for suite in res.suites for model in res.models
                if res.m(model, suite).get("n_unparsed")]
    if unparsed:
        out.append(f"Unparsed verdicts, left out of every rate: {', '.join(unparsed)}.")
    first = res.m(res.models[0], res.suites[0])
    if not first.get("corrected"):
        reason = (first.get("judge") or {}).get("reason", "no judge validation")
        out.append(f"Rates are **not corrected for the judge** ({reason}).")
    else:
        moved = []
        for suite in res.suites:
            for model in res.models:
                m = res.m(model, suite)
                for key in ("safety", "utility"):
                    raw, cor = m.get(key), (m.get("corrected") or {}).get(key)
                    if raw is not None and cor is not None and abs(cor - raw) > CORRECTION_SHIFT:
                        moved.append(f"{model}/{suite} {key} {raw:.3f} -> {cor:.3f}")
        if moved:
            out.append(f"The judge's measured errors move these rates by more than {CORRECTION_SHIFT:.2f} "
                       f"(raw -> corrected): {'; '.join(moved)}.")
    return out


def _width(ci: dict[str, float] | None) -> float:
    return 0.0 if not ci else ci["hi"] - ci["lo"]


def _safe_slice(m: dict[str, Any]) -> dict[str, Any]:
    return (m.get("partition") or {}).get("safe") or m


def _unsafe_slice(m: dict[str, Any]) -> dict[str, Any]:
    return (m.get("partition") or {}).get("unsafe") or m


def headline_table(res: Results, suite: str) -> list[str]:
    ref = res.reference
    lines = [
        f"| model | safety | utility | overall | Δ safety vs {ref} | Δ utility | Δ overall | corrected safety | corrected utility |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in res.models:
        m = res.m(model, suite)
        d = res.delta(model, suite)
        deltas = "| – | – | – |" if d is None else f"| {_delta(d, 'safety')} | {_delta(d, 'utility')} | {_delta(d, 'overall')} |"
        lines.append(f"| {model} | {_rate(m, 'safety', 'n_illegitimate')} | {_rate(m, 'utility', 'n_legitimate')} "
                     f"| {_rate(m, 'overall')} {deltas} {_corrected(m, 'safety')} | {_corrected(m, 'utility')} |")
    pairing = [f"{model}: {_pairing(d)}" for model in res.models if (d := res.delta(model, suite)) is not None]
    if pairing:
        lines += ["", f"Δ: difference from {ref} with a bootstrap interval ({'; '.join(pairing)})."]
    return lines


def xstest_table(res: Results, suite: str) -> list[str]:
    ref = res.reference
    lines = [
        f"| model | safe prompts refused (over-refusal) | rise over {ref} | unsafe prompts withheld | change vs {ref} "
        "| corrected over-refusal | corrected unsafe withheld |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in res.models:
        m = res.m(model, suite)
        safe, unsafe = _safe_slice(m), _unsafe_slice(m)
        rate, ci = _flip(safe, "utility")
        over = "–" if rate is None else f"{_fmt(rate)}{_fmt_ci(ci)} (n={safe['n_legitimate']})"
        c_rate, c_ci = _flip(safe.get("corrected"), "utility")
        c_over = "–" if c_rate is None else f"{_fmt(c_rate)}{_fmt_ci(c_ci)}"
        d_safe = res.delta(model, suite, "safe") or res.delta(model, suite)
        d_unsafe = res.delta(model, suite, "unsafe") or res.delta(model, suite)
        lines.append(f"| {model} | {over} | {_rise(d_safe)} | {_rate(unsafe, 'safety', 'n_illegitimate')} | {_delta(d_unsafe, 'safety')} "
                     f"| {c_over} | {_corrected(unsafe, 'safety')} |")
    return lines


def judge_lines(res: Results, stated: dict[str, Any] | None = None) -> list[str]:
    judge = stated or res.m(res.models[0], res.suites[0]).get("judge") or {}
    if "sensitivity" not in judge:
        return [f"No judge correction: {judge.get('reason', 'no judge validation')}. Corrected columns show –."]
    return [
        f"Corrected rates use the Rogan-Gladen estimator with the judge's figures on held-out human-labelled answers "
        f"(`{judge.get('source')}`): sensitivity {judge['sensitivity']:.3f} (withheld answers called withheld, "
        f"n={judge['n_withheld']}), specificity {judge['specificity']:.3f} (answered answers called answered, "
        f"n={judge['n_answered']}). Corrected = (raw + spec - 1) / (sens + spec - 1), clipped to [0, 1]; "
        "its interval resamples both the suite's items and the validation cells."
    ]


def partition_table(res: Results, suite: str) -> list[str]:
    lines = [
        "| partition | model | safety (raw) | safety (corrected) | utility (raw) | utility (corrected) | Δ safety | Δ utility |",
        "|---|---|---|---|---|---|---|---|",
    ]
    parts = sorted({p for model in res.models for p in res.m(model, suite)["partition"]})
    for part in parts:
        for model in res.models:
            r = res.m(model, suite)["partition"].get(part)
            d = res.delta(model, suite, part)
            lines.append(f"| {part} | {model} | {_rate(r, 'safety', 'n_illegitimate')} | {_corrected(r, 'safety')} "
                         f"| {_rate(r, 'utility', 'n_legitimate')} | {_corrected(r, 'utility')} "
                         f"| {_delta(d, 'safety')} | {_delta(d, 'utility')} |")
    return lines


def slice_table(res: Results, suite: str, key: str, title: str) -> list[str]:
    """Safety and utility per slice and model, each with the items it rests on."""
    slices = sorted({s for model in res.models for s in res.m(model, suite).get(key) or {}})
    header = f"| {title} | " + " | ".join(f"{model} safety | {model} utility" for model in res.models) + " |"
    lines = [header, "|---|" + "---|---|" * len(res.models)]
    for s in slices:
        cells = []
        for model in res.models:
            r = (res.m(model, suite).get(key) or {}).get(s)
            cells.append("–" if not r or r["safety"] is None else f"{r['safety']:.2f} ({r['n_illegitimate']})")
            cells.append("–" if not r or r["utility"] is None else f"{r['utility']:.2f} ({r['n_legitimate']})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def dual_use_table(res: Results, suite: str) -> list[str]:
    lines = ["| model | over-refusal, controlled compounds (n) | over-refusal, common compounds (n) |", "|---|---|---|"]
    for model in res.models:
        m = res.m(model, suite)
        lines.append(f"| {model} | {_fmt(m.get('over_refusal_dual_use'))} ({m.get('n_dual_use', 0)}) "
                     f"| {_fmt(m.get('over_refusal_common'))} ({m.get('n_common_legitimate', 0)}) |")
    return lines


def frontier_rows(res: Results) -> list[dict[str, Any]]:
    """One row per (model, suite): the data of the `dvc plots` scatter and of the lambda frontier."""
    rows = []
    for suite in res.suites:
        for model in res.models:
            m = res.m(model, suite)
            family, lam = parse_model(model)
            c = m.get("corrected") or {}
            rows.append({"model": model, "suite": suite, "family": family, "lambda": lam,
                         "safety": m["safety"], "utility": m["utility"], "overall": m["overall"],
                         "safety_corrected": c.get("safety"), "utility_corrected": c.get("utility"),
                         "n_illegitimate": m["n_illegitimate"], "n_legitimate": m["n_legitimate"]})
    return rows


def frontier_table(res: Results) -> list[str]:
    points = sorted((r for r in frontier_rows(res) if r["lambda"] is not None),
                    key=lambda r: (r["suite"], r["family"], r["lambda"]))
    if not points:
        return ["No adapter-scale points in eval.models (a model named `<model>~<lambda>` or `<model>@<lambda>`, e.g. "
                "`dpo~0.5`, is <model>'s adapter scaled by lambda); the plot shows one point per model."]
    lines = ["| suite | model | λ | safety | utility | overall | corrected safety | corrected utility |",
             "|---|---|---|---|---|---|---|---|"]
    for r in points:
        lines.append(f"| {r['suite']} | {r['family']} | {r['lambda']:g} | {_fmt(r['safety'])} | {_fmt(r['utility'])} "
                     f"| {_fmt(r['overall'])} | {_fmt(r['safety_corrected'])} | {_fmt(r['utility_corrected'])} |")
    return lines


def summary(res: Results) -> dict[str, Any]:
    """Flat headline per suite and model, with the change from the reference: a DVC metrics file."""
    out: dict[str, Any] = {}
    for suite in res.suites:
        for model in res.models:
            m = res.m(model, suite)
            d = res.delta(model, suite) or {}
            row: dict[str, Any] = {k: m[k] for k in ("safety", "utility", "overall", "n")}
            row.update({f"{k}_corrected": (m.get("corrected") or {}).get(k) for k in ("safety", "utility")})
            if d:
                row.update({f"delta_{k}": d.get(k) for k in ("safety", "utility", "overall")})
            if is_xstest(suite, m):
                row["over_refusal"], _ = _flip(_safe_slice(m), "utility")
                row["unsafe_withheld"] = _unsafe_slice(m).get("safety")
                d_safe = res.delta(model, suite, "safe")
                if d_safe and d_safe.get("utility") is not None:
                    row["over_refusal_rise"] = round(-d_safe["utility"], 4)
            out.setdefault(suite, {})[model] = row
    return out


# --- examples --------------------------------------------------------------------------------


def pick_examples(judged: dict[str, pl.DataFrame], per_label: int = EXAMPLES_PER_LABEL) -> list[str]:
    """prompt_ids to show: shared by every model, those where the verdicts disagree first, then by id."""
    tables = list(judged.values())
    shared = set(tables[0]["prompt_id"].to_list())
    for t in tables[1:]:
        shared &= set(t["prompt_id"].to_list())
    verdicts = pl.concat([t.select("prompt_id", "label", "verdict") for t in tables]).filter(pl.col("prompt_id").is_in(list(shared)))
    ranked = (
        verdicts.group_by("prompt_id", "label")
        .agg(pl.col("verdict").n_unique().alias("n_verdicts"))
        .sort(["n_verdicts", "prompt_id"], descending=[True, False])
    )
    picked: list[str] = []
    for label in ("illegitimate", "legitimate"):
        picked += ranked.filter(pl.col("label") == label)["prompt_id"].head(per_label).to_list()
    return picked


def example_text(response: str, label: str, limit: int) -> str:
    """An answer as the report shows it: cut to `limit`; withheld if it answers an
    illegitimate prompt with anything that looks operational."""
    if label == "illegitimate" and operational_content(response or ""):
        return WITHHELD
    return _one_line(response, limit)


def examples_section(judged: dict[str, pl.DataFrame], per_label: int = EXAMPLES_PER_LABEL) -> list[str]:
    lines: list[str] = []
    rows = {name: {r["prompt_id"]: r for r in t.iter_rows(named=True)} for name, t in judged.items()}
    for pid in pick_examples(judged, per_label):
        first = next(iter(rows.values()))[pid]
        tags = " · ".join(str(first[c]) for c in ("label", "partition", "task", "framing", "type", "compound")
                          if first.get(c) is not None)
        lines += ["", f"**{tags}** (`{pid}`)", "", f"> {_one_line(first['prompt'], PROMPT_CHARS)}", ""]
        limit = ILLEGITIMATE_CHARS if first["label"] == "illegitimate" else LEGITIMATE_CHARS
        for name, by_id in rows.items():
            r = by_id[pid]
            lines.append(f"- **{name}** ({r['verdict']}): {example_text(r['response'], first['label'], limit)}")
    return lines


# --- the page --------------------------------------------------------------------------------


def validation_lines(validation: dict[str, Any] | None) -> list[str]:
    """Which judge scored the answers and how it held on human labels (metrics/judge/validation.json)."""
    if not validation:
        return []
    judges = list(validation.get("judges") or [])
    if validation.get("available") is False:
        return [f"Verdicts come from {'one judge (' + judges[0] + ')' if len(judges) == 1 else ', '.join(judges)}; "
                f"it was not validated here: {validation.get('reason')}.", ""]
    who = f"one judge ({judges[0]})" if len(judges) == 1 else f"{len(judges)} judges ({', '.join(judges)}) fused by {validation.get('fusion')}"
    held = validation.get("held_out") or {}
    per_model = ", ".join(f"{m} {d['fused']['accuracy']:.3f}" for m, d in held.items() if "fused" in d)
    worst = validation.get("worst_held_out") or {}
    line = f"Verdicts come from {who}."
    if per_model:
        line += (f" Leave-one-model-out accuracy on XSTest's human labels, each model held out: {per_model}"
                 f" (worst: {worst.get('model')} {worst.get('accuracy')}).")  # fmt: skip
    return [line, ""]


def render(
    res: Results, plots_link: str | None = None, judge: dict[str, Any] | None = None, validation: dict[str, Any] | None = None
) -> str:
    """The markdown report; call res.compute_deltas first. plots_link: plots dir relative to the report."""
    if not res.models or not res.suites:
        raise InputError("report needs at least one model (eval.models) and one suite (eval.suites)")
    first = res.m(res.models[0], res.suites[0])
    level = int(round(100 * first.get("ci_level", 0.95)))
    ref = res.reference
    lines = [
        "# libra evaluation report",
        "",
        "Safety: share of illegitimate prompts withheld (refusal or partial refusal). Utility: share of legitimate "
        f"prompts fully answered. Overall: their mean (balanced accuracy). Brackets: bootstrap {level}% intervals; "
        "n: items a rate rests on (unparsed verdicts are left out). Δ: change from "
        f"{ref}. Corrected: rates corrected for the judge's measured errors (section Judge).",
        "",
        "## Read this first",
        "",
        *([f"- {w}" for w in warnings(res)] or ["- Nothing flagged."]),
        "",
        "## Headline",
    ]
    for suite in res.suites:
        lines += ["", f"### {suite}", "", *headline_table(res, suite)]
    xs = [s for s in res.suites if is_xstest(s, res.m(ref, s))]
    lines += ["", "## Out of domain: XSTest", ""]
    if xs:
        lines.append("Over-refusal: share of XSTest's safe prompts (harmless questions with alarming words) not fully "
                     "answered. Unsafe withheld: share of its unsafe prompts withheld.")
        for suite in xs:
            lines += ["", f"### {suite}", "", *xstest_table(res, suite)]
    else:
        lines.append("**No XSTest suite in eval.suites: the out-of-domain headline is missing.** Add `xstest` to eval.suites.")
    lines += ["", "## Judge", "", *validation_lines(validation), *judge_lines(res, judge), "", "## By partition"]
    for suite in res.suites:
        lines += ["", f"### {suite}", "", *partition_table(res, suite)]
    lines += ["", "## Safety/utility frontier", "", *frontier_table(res)]
    if plots_link is not None:
        lines += ["", f"![safety vs utility]({plots_link}/frontier.png)", "", f"![by partition]({plots_link}/by_partition.png)"]
    for suite in res.suites:
        present = [k for k in BREAKDOWN_TITLES if res.m(ref, suite).get(k)]
        has_dual = any(res.m(model, suite).get("n_dual_use") for model in res.models)
        if not present and not has_dual:
            continue
        lines += ["", f"## Breakdowns: {suite}"]
        for key in present:
            lines += ["", f"By {BREAKDOWN_TITLES[key]} (rate (n)):", "", *slice_table(res, suite, key, BREAKDOWN_TITLES[key])]
        if has_dual:
            lines += ["", "Dual use: share of legitimate prompts not fully answered, by compound class. A gap between the "
                      "two columns means the model refuses by compound name rather than by request.", "",
                      *dual_use_table(res, suite)]
    lines += [
        "",
        "## Example answers",
        "",
        f"Prompts where the models' verdicts differ come first. Answers to illegitimate prompts are cut at "
        f"{ILLEGITIMATE_CHARS} characters (and withheld if they look operational), others at {LEGITIMATE_CHARS}.",
    ]
    for suite in res.suites:
        lines += ["", f"### {suite}", *examples_section({model: res.judged[(model, suite)] for model in res.models})]
    lines.append("")
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(r: dict[str, Any], key: str) -> list[list[float]] | None:
    ci = (r.get("ci") or {}).get(key)
    return None if not ci or r.get(key) is None else [[max(0.0, r[key] - ci["lo"])], [max(0.0, ci["hi"] - r[key])]]


def plot_frontier(res: Results, path: str | os.PathLike[str]) -> None:
    """Safety against utility per suite, one point per model with its intervals; `<model>@<lambda>`
    points are joined in lambda order. Up and right is better."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(res.suites), figsize=(5 * len(res.suites), 5), squeeze=False)
    for ax, suite in zip(axes[0], res.suites, strict=True):
        lines: dict[str, list[tuple[float, float, float]]] = {}
        for model in res.models:
            m = res.m(model, suite)
            if m["safety"] is None or m["utility"] is None:
                continue
            family, lam = parse_model(model)
            ax.errorbar(m["utility"], m["safety"], xerr=_err(m, "utility"), yerr=_err(m, "safety"), fmt="o", capsize=3, alpha=0.8)
            ax.annotate(model, (m["utility"], m["safety"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
            if lam is not None:
                lines.setdefault(family, []).append((lam, m["utility"], m["safety"]))
        for family, pts in lines.items():
            pts.sort()
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "-s", markersize=4, alpha=0.6, label=f"{family} over λ")
        if lines:
            ax.legend(fontsize=8)
        ax.set(xlim=(-0.03, 1.08), ylim=(-0.03, 1.08), xlabel="utility (legitimate answered)",
               ylabel="safety (illegitimate withheld)", title=suite)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_by_partition(res: Results, path: str | os.PathLike[str]) -> None:
    """Safety and utility per partition and model, one row per suite, with intervals."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(res.suites), 2, figsize=(12, 4 * len(res.suites)), squeeze=False)
    width = 0.8 / len(res.models)
    for row, suite in zip(axes, res.suites, strict=True):
        parts = sorted({p for model in res.models for p in res.m(model, suite)["partition"]})
        for ax, key in zip(row, ("safety", "utility"), strict=True):
            shown = [p for p in parts if any((res.m(model, suite)["partition"].get(p) or {}).get(key) is not None for model in res.models)]
            for j, model in enumerate(res.models):
                slices = [res.m(model, suite)["partition"].get(p) or {} for p in shown]
                values = [s.get(key) or 0.0 for s in slices]
                errs = [_err(s, key) or [[0.0], [0.0]] for s in slices]
                yerr = [[e[0][0] for e in errs], [e[1][0] for e in errs]] if errs else None
                ax.bar([i + j * width for i in range(len(shown))], values, width, yerr=yerr, capsize=2, label=model)
            ax.set_xticks([i + width * (len(res.models) - 1) / 2 for i in range(len(shown))], shown, rotation=20, ha="right")
            ax.set(title=f"{suite}: {key} by partition", ylim=(0, 1.05))
            ax.grid(axis="y", alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    from libra.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def check_judge(res: Results, stated: dict[str, Any], source: str) -> None:
    """The metrics must have been scored with the validation file the report is given."""
    for (model, suite), m in res.metrics.items():
        used = (m.get("judge") or {}).get("confusion")
        if used is not None and used != stated.get("confusion"):
            raise InputError(f"metrics for {model}/{suite} were corrected with confusion {used}, but {source} holds "
                             f"{stated.get('confusion')}; rerun `dvc repro score`")

