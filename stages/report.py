"""python stages/report.py --metrics 'metrics/eval/{model}/{suite}.json' --judged 'data/judged/{model}/{suite}.parquet' --validation metrics/judge/validation.json --out metrics/report.md --plots metrics/plots --frontier metrics/frontier.json --summary metrics/summary.json

Compare every scored (model, suite): a markdown report that leads with what a user must not
miss (warnings; per suite safety, utility and overall with intervals, n and the paired change
from base; XSTest over-refusal and its rise over base), then per-partition tables raw beside
judge-corrected, the safety/utility frontier (over models and `<model>@<lambda>` adapter
scales), breakdowns and example answers; PNG plots (frontier.png, by_partition.png); the
frontier rows that `dvc plots` draws; and optionally a flat summary json for `dvc metrics`.
Models come from eval.models, suites from eval.suites (a list of names or a mapping keyed by
name); --models / --suites override them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from libra.config import load_params
from libra.errors import InputError
from libra.eval.report import (
    Results, check_judge, expand, frontier_rows, names, plot_by_partition, plot_frontier, render, summary,
)
from libra.eval.score import JudgeFigures
from libra.io import read_parquet, write_json, write_text
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", required=True, help="pattern with {model} and {suite}: metrics json from the score stage")
    p.add_argument("--judged", required=True, help="pattern with {model} and {suite}: judged parquet")
    p.add_argument("--validation", help="judge validation json; checked against the figures the metrics were corrected with")
    p.add_argument("--out", required=True, help="markdown report to write")
    p.add_argument("--plots", required=True, help="directory for frontier.png and by_partition.png")
    p.add_argument("--frontier", required=True, help="json rows, one per (model, suite), for dvc plots")
    p.add_argument("--summary", help="flat json per suite and model (rates, deltas, XSTest over-refusal) for dvc metrics")
    p.add_argument("--models", nargs="+", help="model names (default: eval.models)")
    p.add_argument("--suites", nargs="+", help="suite names (default: eval.suites)")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    for flag, pattern, needs in (("--metrics", args.metrics, "{model}"), ("--judged", args.judged, "{model}")):
        if needs not in pattern or "{suite}" not in pattern:
            raise InputError(f"{flag} {pattern!r} must contain {{model}} and {{suite}}, e.g. 'metrics/eval/{{model}}/{{suite}}.json'")
    params = load_params()
    models = args.models or names(params.eval.models, "eval.models")
    if args.suites:
        suites = args.suites
    elif getattr(params.eval, "suites", None) is not None:
        suites = names(params.eval.suites, "eval.suites")
    else:
        raise InputError("params: eval.suites is missing; name the suites there (e.g. [in_domain, xstest]) or pass --suites")

    res = Results(models=list(models), suites=list(suites), metrics={}, judged={})
    for model in res.models:
        for suite in res.suites:
            mpath, jpath = Path(expand(args.metrics, model, suite)), Path(expand(args.judged, model, suite))
            if not mpath.exists():
                raise InputError(f"{mpath} not found; run `dvc repro score` (model {model}, suite {suite})")
            metrics = json.loads(mpath.read_text())
            table = read_parquet(jpath)
            for col, want in (("model", model), ("suite", suite)):
                held = table[col].drop_nulls().unique().to_list() if col in table.columns else []
                if held and held != [want]:
                    raise InputError(f"{jpath} holds {col} {held} but is read as {col} {want!r}; fix the path pattern or rerun `dvc repro judge`")
            res.metrics[(model, suite)], res.judged[(model, suite)] = metrics, table

    if args.validation:
        figures, _ = JudgeFigures.load_optional(args.validation)
        if figures is not None:
            check_judge(res, figures.summary(), args.validation)
    res.compute_deltas(bootstrap=params.score.bootstrap, seed=params.score.seed)

    plots = Path(args.plots)
    plot_frontier(res, plots / "frontier.png")
    plot_by_partition(res, plots / "by_partition.png")
    link = Path(os.path.relpath(plots, Path(args.out).parent)).as_posix()
    validation = json.loads(Path(args.validation).read_text()) if args.validation else None
    write_text(render(res, plots_link=link, validation=validation), args.out)
    write_json(frontier_rows(res), args.frontier)
    if args.summary:
        write_json(summary(res), args.summary)
    print(f"report: {len(res.models)} models x {len(res.suites)} suites -> {args.out}, {plots}/frontier.png, "
          f"{plots}/by_partition.png, {args.frontier}" + (f", {args.summary}" if args.summary else ""))


if __name__ == "__main__":
    main()
