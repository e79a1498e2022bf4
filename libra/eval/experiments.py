"""The safety/utility frontier across `dvc exp` runs: one point per (experiment, model, suite).

    libra frontier                       # table of every experiment of HEAD, from `dvc exp show`
    libra frontier --all-commits --plot metrics/experiments.png

The report's frontier (metrics/plots/frontier.png) spans the models of one run, e.g. the
adapter-scale points `dpo~0.5`; this one spans runs, so a recipe can be chosen by where
its point lies. Points come from the `metrics/eval/<model>/<suite>.json` columns that
`dvc exp show --csv` prints, so any model and suite the runs scored appear.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from libra.errors import LibraError

_COLUMN = re.compile(r"metrics/eval/(?P<model>[^/]+)/(?P<suite>[^/]+)\.json:(?P<key>safety|utility|overall)")


@dataclass(frozen=True)
class Point:
    experiment: str
    model: str
    suite: str
    safety: float
    utility: float
    overall: float | None
    named: bool = False  # a `dvc exp` experiment, not a commit or the workspace


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "-") else None
    except ValueError:
        return None


def experiment_points(table_csv: str) -> list[Point]:
    """Points from `dvc exp show --csv`: rows without both safety and utility are skipped."""
    points = []
    for row in csv.DictReader(io.StringIO(table_csv)):
        named = bool(row.get("Experiment"))
        name = row.get("Experiment") or row.get("rev") or "?"
        if row.get("State") in ("Queued", "Running", "Failed"):
            continue
        cells: dict[tuple[str, str], dict[str, float | None]] = {}
        for column, value in row.items():
            m = _COLUMN.fullmatch(column or "")
            if m:
                cells.setdefault((m["model"], m["suite"]), {})[m["key"]] = _number(value)
        for (model, suite), v in sorted(cells.items()):
            if v.get("safety") is not None and v.get("utility") is not None:
                points.append(Point(name, model, suite, v["safety"], v["utility"], v.get("overall"), named))  # type: ignore[arg-type]
    return points


def distinct(points: list[Point]) -> list[Point]:
    """Every named experiment, and each commit or workspace row only when its scores are new:
    commits that touched only code or docs repeat their parent's metrics."""
    runs: dict[str, list[Point]] = {}
    for p in points:
        runs.setdefault(p.experiment, []).append(p)
    seen: set[tuple[Any, ...]] = set()
    out = []
    for pts in runs.values():
        key = tuple(sorted((p.model, p.suite, p.safety, p.utility) for p in pts))
        if pts[0].named or key not in seen:
            out.extend(pts)
        seen.add(key)
    return out


def dvc_exp_table(all_commits: bool = False, cwd: str | os.PathLike[str] | None = None) -> str:
    args = ["exp", "show", "--csv", "--no-fetch", *(["--all-commits"] if all_commits else [])]
    # dvc from libra's own environment, whatever PATH says
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LibraError(f"`dvc {' '.join(args)}` failed: {last}")
    return proc.stdout


def frontier_markdown(points: list[Point]) -> str:
    """One row per (experiment, model): each suite's safety / utility (XSTest: over-refusal = 1 - utility)."""
    suites = sorted({p.suite for p in points})
    by_key: dict[tuple[str, str], dict[str, Point]] = {}
    for p in points:
        by_key.setdefault((p.experiment, p.model), {})[p.suite] = p
    head = "| experiment | model | " + " | ".join(f"{s} safety / utility" for s in suites) + " |"
    lines = [head, "|" + "---|" * (2 + len(suites))]
    for (exp, model), cells in by_key.items():
        vals = [f"{cells[s].safety:.3f} / {cells[s].utility:.3f}" if s in cells else "-" for s in suites]
        lines.append(f"| {exp} | {model} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot_experiments(points: list[Point], path: str | os.PathLike[str]) -> None:
    """Safety against utility, one panel per suite, one labelled point per (experiment, trained model)."""
    from libra.eval.report import _pyplot, _save

    plt = _pyplot()
    suites = sorted({p.suite for p in points})
    fig, axes = plt.subplots(1, len(suites), figsize=(5.5 * len(suites), 5), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        cell = [p for p in points if p.suite == suite]
        # Every run's base model is the same model: grey squares, one legend entry, no labels.
        base = [p for p in cell if p.model == "base"]
        if base:
            ax.plot([p.utility for p in base], [p.safety for p in base], "s", color="0.6", alpha=0.6, label="base (every run)")
            ax.legend(loc="lower left", fontsize=7)
        for p in (p for p in cell if p.model != "base"):
            ax.plot(p.utility, p.safety, "o", alpha=0.75)
            ax.annotate(f"{p.experiment}:{p.model}", (p.utility, p.safety), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(xlim=(-0.03, 1.08), ylim=(-0.03, 1.08), xlabel="utility (legitimate answered)",
               ylabel="safety (illegitimate withheld)", title=f"{suite}: across dvc experiments")  # fmt: skip
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
