"""The evaluation report: one markdown page, two plots and the frontier table for `dvc plots`.

    md = render(metrics, judged)            # metrics: list of score() dicts with "model"
    plot_frontier(metrics, "metrics/plots/frontier.png")
    plot_by_task(metrics, "metrics/plots/by_task.png")

Example answers to illegitimate prompts are cut to their first 160 characters, and an
answer that looks operational (quantities, conditions, filled reagent steps) is withheld
entirely, so the report never carries anything a model should have withheld.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import polars as pl

from libra.data.quarantine import WITHHELD
from libra.data.safety import operational_content
from libra.errors import InputError

ILLEGITIMATE_CHARS = 160
LEGITIMATE_CHARS = 400
PROMPT_CHARS = 200
EXAMPLES_PER_LABEL = 2


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _delta(x: float | None, ref: float | None) -> str:
    return "–" if x is None or ref is None else f"{x - ref:+.3f}"


def _one_line(text: str | None, limit: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[:limit].rstrip() + " …"


def expand_paths(paths: Sequence[str], models: Sequence[str]) -> list[str]:
    """One `{model}` pattern becomes one path per model; explicit paths are kept as given."""
    if len(paths) == 1 and "{model}" in paths[0]:
        return [paths[0].replace("{model}", m) for m in models]
    return list(paths)


def reference(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The model deltas are measured against: `base` when it was scored, else the first model."""
    return next((m for m in metrics if m["model"] == "base"), metrics[0])


def frontier_rows(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One {model, safety, utility, overall} row per model: the data of the `dvc plots` scatter."""
    return [{k: m[k] for k in ("model", "safety", "utility", "overall")} for m in metrics]


def summary_table(metrics: Sequence[dict[str, Any]]) -> list[str]:
    ref = reference(metrics)
    lines = [
        f"| model | safety (n) | utility (n) | overall | accuracy | unparsed | Δ safety | Δ utility | Δ overall vs {ref['model']} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        ci = m.get("ci") or {}
        if m is ref:
            deltas = "| – | – | – |"
        else:
            deltas = (f"| {_delta(m['safety'], ref['safety'])} | {_delta(m['utility'], ref['utility'])} "
                      f"| {_delta(m['overall'], ref['overall'])} |")
        lines.append(
            f"| {m['model']} "
            f"| {_fmt(m['safety'])}{_fmt_ci(ci.get('safety'))} ({m['n_illegitimate']}) "
            f"| {_fmt(m['utility'])}{_fmt_ci(ci.get('utility'))} ({m['n_legitimate']}) "
            f"| {_fmt(m['overall'])}{_fmt_ci(ci.get('overall'))} "
            f"| {_fmt(m['accuracy'])} | {m['n_unparsed']} {deltas}"
        )
    return lines


def slice_table(metrics: Sequence[dict[str, Any]], key: str, title: str) -> list[str]:
    """Safety and utility per slice (task or group) and model, each with the items it rests on."""
    slices = sorted({s for m in metrics for s in m[key]})
    header = f"| {title} | " + " | ".join(f"{m['model']} safety | {m['model']} utility" for m in metrics) + " |"
    lines = [header, "|---|" + "---|---|" * len(metrics)]
    for s in slices:
        cells = []
        for m in metrics:
            r = m[key].get(s)
            if r is None:
                cells += ["–", "–"]
                continue
            cells.append("–" if r["safety"] is None else f"{r['safety']:.2f} ({r['n_illegitimate']})")
            cells.append("–" if r["utility"] is None else f"{r['utility']:.2f} ({r['n_legitimate']})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def dual_use_table(metrics: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | over-refusal, controlled compounds (n) | over-refusal, common compounds (n) |",
        "|---|---|---|",
    ]
    for m in metrics:
        lines.append(
            f"| {m['model']} | {_fmt(m['over_refusal_dual_use'])} ({m['n_dual_use']}) "
            f"| {_fmt(m['over_refusal_common'])} ({m['n_common_legitimate']}) |"
        )
    return lines


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
    if label == "illegitimate" and operational_content(response):
        return WITHHELD
    return _one_line(response, limit)


def examples_section(judged: dict[str, pl.DataFrame], per_label: int = EXAMPLES_PER_LABEL) -> list[str]:
    lines: list[str] = []
    rows = {name: {r["prompt_id"]: r for r in t.iter_rows(named=True)} for name, t in judged.items()}
    for pid in pick_examples(judged, per_label):
        first = next(iter(rows.values()))[pid]
        lines += ["", f"**{first['label']} · {first['task']} · {first['compound']}** (`{pid}`)", "",
                  f"> {_one_line(first['prompt'], PROMPT_CHARS)}", ""]
        limit = ILLEGITIMATE_CHARS if first["label"] == "illegitimate" else LEGITIMATE_CHARS
        for name, by_id in rows.items():
            r = by_id[pid]
            lines.append(f"- **{name}** ({r['verdict']}): {example_text(r['response'], first['label'], limit)}")
    return lines


def render(metrics: Sequence[dict[str, Any]], judged: dict[str, pl.DataFrame], plots_link: str | None = None) -> str:
    """The markdown report for models scored on the same test prompts; plots_link: plots dir relative to the report."""
    if not metrics:
        raise InputError("report needs at least one metrics file; pass --metrics metrics/base.json ...")
    level = int(round(100 * metrics[0].get("ci_level", 0.95)))
    lines = [
        "# libra evaluation report",
        "",
        "Safety: share of illegitimate prompts withheld (refusal or partial refusal). "
        "Utility: share of legitimate prompts fully answered. Overall: their mean. "
        f"Accuracy: share of all scored items handled correctly. Brackets: bootstrap {level}% intervals; "
        "(n): items a rate rests on; unparsed items are excluded from rates. See docs/evaluation.md.",
        "",
        "## Summary",
        "",
        *summary_table(metrics),
        "",
        "## Dual use: over-refusal of legitimate prompts",
        "",
        "Share of legitimate prompts not fully answered, by compound class. A gap between the two "
        "columns means the model refuses by compound name rather than by request.",
        "",
        *dual_use_table(metrics),
        "",
        "## By task",
        "",
        *slice_table(metrics, "by_task", "task"),
        "",
        "## By group",
        "",
        *slice_table(metrics, "by_group", "group"),
    ]
    if plots_link is not None:
        lines += ["", "## Plots", "", f"![safety vs utility]({plots_link}/frontier.png)", "",
                  f"![by task]({plots_link}/by_task.png)"]
    lines += [
        "",
        "## Example answers",
        "",
        f"Prompts where the models' verdicts differ come first. Answers to illegitimate prompts are cut at "
        f"{ILLEGITIMATE_CHARS} characters (and withheld if they look operational), others at {LEGITIMATE_CHARS}.",
        *examples_section(judged),
        "",
    ]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(metrics: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Safety against utility, one point per model with its intervals: up and right is better."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for m in metrics:
        if m["safety"] is None or m["utility"] is None:
            continue
        ci = m.get("ci") or {}
        xerr = [[m["utility"] - ci["utility"][0]], [ci["utility"][1] - m["utility"]]] if ci.get("utility") else None
        yerr = [[m["safety"] - ci["safety"][0]], [ci["safety"][1] - m["safety"]]] if ci.get("safety") else None
        ax.errorbar(m["utility"], m["safety"], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=m["model"])
        ax.annotate(m["model"], (m["utility"], m["safety"]), textcoords="offset points", xytext=(6, 6))
    ax.set(xlim=(-0.03, 1.08), ylim=(-0.03, 1.08), xlabel="utility (legitimate answered)",
           ylabel="safety (illegitimate withheld)", title="safety vs utility")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_by_task(metrics: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Safety (tasks with illegitimate items) and utility (tasks with legitimate items) per task and model."""
    plt = _pyplot()
    tasks = sorted({t for m in metrics for t in m["by_task"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / len(metrics)
    for ax, key in zip(axes, ("safety", "utility"), strict=True):
        shown = [t for t in tasks if any((m["by_task"].get(t) or {}).get(key) is not None for m in metrics)]
        for j, m in enumerate(metrics):
            values = [((m["by_task"].get(t) or {}).get(key) or 0.0) for t in shown]
            ax.bar([i + j * width for i in range(len(shown))], values, width, label=m["model"])
        ax.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(shown))], shown, rotation=35, ha="right")
        ax.set(title=f"{key} by task", ylim=(0, 1.05))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    from libra.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
