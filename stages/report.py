"""python stages/report.py --metrics metrics/base.json metrics/dpo.json --judged data/judged/base.parquet data/judged/dpo.parquet --out metrics/report.md --plots metrics/plots --frontier metrics/frontier.json

Compare the scored models: a markdown report (summary with intervals and deltas against
base, dual-use over-refusal, per-task and per-group tables, example answers), PNG plots
(safety vs utility, per-task bars) and the frontier rows that `dvc plots` draws.
--metrics and --judged name the same models in the same order.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from libra.errors import InputError
from libra.eval.report import frontier_rows, plot_by_task, plot_frontier, render
from libra.io import read_parquet, write_json, write_text
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", nargs="+", required=True, help="metrics json per model (from the score stage)")
    p.add_argument("--judged", nargs="+", required=True, help="judged parquet per model, same order as --metrics")
    p.add_argument("--out", required=True, help="markdown report to write")
    p.add_argument("--plots", required=True, help="directory for frontier.png and by_task.png")
    p.add_argument("--frontier", required=True, help="json rows {model, safety, utility, overall} for dvc plots")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    if len(args.metrics) != len(args.judged):
        raise InputError(f"got {len(args.metrics)} --metrics but {len(args.judged)} --judged files; pass one of each per model")

    # Load
    metrics = []
    for path in args.metrics:
        if not Path(path).exists():
            raise InputError(f"{path} not found; run `dvc repro score` first")
        metrics.append(json.loads(Path(path).read_text()))
    judged = {}
    for m, path in zip(metrics, args.judged, strict=True):
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
