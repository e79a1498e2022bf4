"""python stages/report.py --metrics 'metrics/eval/{model}.json' --judged 'data/judged/{model}.parquet' --out metrics/report.md --plots metrics/plots --frontier metrics/frontier.json

Compare the scored models: a markdown report (summary with intervals and deltas against
base, dual-use over-refusal, per-task and per-group tables, example answers), PNG plots
(safety vs utility, per-task bars) and the frontier rows that `dvc plots` draws.
--metrics and --judged are either one pattern with `{model}`, filled in for each model of
eval.models (so adding a model is a params.yaml change only), or explicit lists of files
naming the same models in the same order.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from libra.config import load_params
from libra.errors import InputError
from libra.eval.report import expand_paths, frontier_rows, plot_by_task, plot_frontier, render
from libra.io import read_parquet, write_json, write_text
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", nargs="+", required=True,
                   help="metrics json per model (from the score stage), or one pattern with {model}")
    p.add_argument("--judged", nargs="+", required=True,
                   help="judged parquet per model, same order as --metrics, or one pattern with {model}")
    p.add_argument("--out", required=True, help="markdown report to write")
    p.add_argument("--plots", required=True, help="directory for frontier.png and by_task.png")
    p.add_argument("--frontier", required=True, help="json rows {model, safety, utility, overall} for dvc plots")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    models = load_params().eval.models
    metrics_paths, judged_paths = expand_paths(args.metrics, models), expand_paths(args.judged, models)
    if len(metrics_paths) != len(judged_paths):
        raise InputError(f"got {len(metrics_paths)} --metrics but {len(judged_paths)} --judged files; pass one of each per model")

    # Load
    metrics = []
    for path in metrics_paths:
        if not Path(path).exists():
            raise InputError(f"{path} not found; run `dvc repro score` first")
        metrics.append(json.loads(Path(path).read_text()))
    judged = {}
    for m, path in zip(metrics, judged_paths, strict=True):
        table = read_parquet(path)
        if "model" in table.columns and table.height and table["model"][0] != m["model"]:
            raise InputError(f"{path} holds model {table['model'][0]!r} but its metrics file is for {m['model']!r}; pass both in the same order")
        judged[m["model"]] = table

    # Report
    plots = Path(args.plots)
    plot_frontier(metrics, plots / "frontier.png")
    plot_by_task(metrics, plots / "by_task.png")
    link = Path(os.path.relpath(plots, Path(args.out).parent)).as_posix()
    write_text(render(metrics, judged, plots_link=link), args.out)
    write_json(frontier_rows(metrics), args.frontier)
    print(f"report: {len(metrics)} models -> {args.out}, {plots}/frontier.png, {plots}/by_task.png, {args.frontier}")


if __name__ == "__main__":
    main()
