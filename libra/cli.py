"""The `libra` command.

    libra params                      # validate params.yaml and print its hash
    libra params --doc                # the params reference, docs/params.md
    libra cache stats | clear         # the shared LLM call cache
    libra cache export PATH | merge PATH   # share it with a teammate
    libra serve --port 8080           # the embedded llama.cpp server, in the foreground
    libra judge --input IN.jsonl --output OUT.jsonl --judges rules,classifier,llm
    libra frontier [--all-commits] [--plot PNG]   # safety/utility of every dvc experiment
    libra probe [--adapter models/dpo] [--output probe.json]   # what a linear readout of the model separates
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from libra.config import load_params, params_hash
from libra.errors import InputError, LibraError
from libra.stage import report


def _cmd_params(args: argparse.Namespace) -> int:
    if args.doc:
        from libra.params_doc import params_doc

        sys.stdout.write(params_doc())
        return 0
    params = load_params(args.params)
    print(f"params OK: {args.params or 'params.yaml'} (hash {params_hash(params)})")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from libra.llm.cache import CallCache

    params = load_params(args.params)
    cache = CallCache(params.llm.cache_path)
    try:
        if args.action == "stats":
            print(json.dumps(cache.stats(), indent=2))
        elif args.action in ("export", "merge"):
            if not args.path:
                raise LibraError(f"libra cache {args.action} needs a PATH (the shared cache file)")
            if args.action == "export":
                print(f"exported {cache.export(args.path, force=args.force)} cached calls to {args.path}")
            else:
                print(f"merged {cache.merge(args.path)} new cached calls from {args.path} into {params.llm.cache_path}")
        else:
            removed = cache.clear(stage=args.stage)
            scope = f"stage {args.stage}" if args.stage else "all stages"
            print(f"removed {removed} cached calls ({scope}) from {params.llm.cache_path}")
    finally:
        cache.close()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from libra.llm.local import free_port, serve_forever

    params = load_params(args.params)
    return serve_forever(params.llm.generator.model, params.llm.local, args.port or free_port())


def _cmd_judge(args: argparse.Namespace) -> int:
    from libra.eval.judge_cli import judge_file

    params = load_params(args.params)
    inp, out = Path(args.input), Path(args.output)
    if out.exists() and not args.force and not (inp.exists() and out.samefile(inp)):
        raise InputError(f"--output {out} already exists; pass --force to replace it, or choose another path")
    judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    summary = judge_file(inp, out, judges, Path(args.classifier), params)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_frontier(args: argparse.Namespace) -> int:
    from libra.eval.experiments import distinct, dvc_exp_table, experiment_points, frontier_markdown, plot_experiments

    points = distinct(experiment_points(dvc_exp_table(all_commits=args.all_commits)))
    if not points:
        raise LibraError("no experiment has metrics/eval/<model>/<suite>.json scores yet; run `dvc repro` or `dvc exp run` first")
    sys.stdout.write(frontier_markdown(points))
    if args.plot:
        plot_experiments(points, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from libra.eval.probe import probe_markdown, run_probe

    try:
        layers = [int(v) for v in args.layers.split(",")] if args.layers else None
    except ValueError:
        raise InputError(f"--layers {args.layers!r}: comma-separated hidden-state indices, e.g. 8,16,24") from None
    suites = [Path(s) for s in args.suite] if args.suite else sorted(Path("data/suites").glob("*.parquet"))
    if not suites:
        raise InputError("no suite to probe: data/suites/ has no parquet file; run `dvc repro suites` or pass --suite PATH")
    adapter = Path(args.adapter) if args.adapter else None
    result = run_probe(Path(args.model), Path(args.train), suites, adapter=adapter, layers=layers)
    sys.stdout.write(probe_markdown(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="libra", description="libra: dual-use safety/utility alignment pipeline (the pipeline itself runs with `dvc repro`).")
    parser.add_argument("--params", default=None, help="params file (default: $LIBRA_PARAMS or ./params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("params", help="validate params.yaml and print its hash")
    p.add_argument("--doc", action="store_true", help="print the params reference (docs/params.md) generated from the models")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("cache", help="inspect or clear the shared LLM call cache (llm.cache_path)")
    p.add_argument(
        "action",
        choices=["stats", "clear", "export", "merge"],
        help="stats: entries, tokens, per stage; clear: delete entries; export PATH: a single-file snapshot to share "
        "(e.g. with dvc add + dvc push); merge PATH: add a teammate's exported entries",
    )
    p.add_argument("path", nargs="?", default=None, help="the shared cache file (export / merge)")
    p.add_argument("--stage", default=None, help="with clear: only this stage's entries (default: all)")
    p.add_argument("--force", action="store_true", help="with export: replace an existing file at PATH")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("serve", help="run the embedded llama.cpp server (SmolLM2-135M-Instruct) in the foreground")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("judge", help="judge any JSONL of {prompt, response} rows for refusal vs compliance")
    p.add_argument("--input", required=True, help="JSONL file, one {\"prompt\": ..., \"response\": ...} per line")
    p.add_argument("--output", required=True, help="JSONL file to write: input rows + verdict + one field per judge")
    p.add_argument("--judges", default="rules,classifier", help="comma-separated subset of rules,classifier,llm (default: rules,classifier)")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    p.add_argument("--classifier", default="models/judge_classifier.joblib", help="trained classifier (default: %(default)s; `dvc repro classifier` makes it)")
    p.set_defaults(func=_cmd_judge)

    p = sub.add_parser("frontier", help="safety and utility of every dvc experiment, per model and suite (a table, and a plot)")
    p.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    p.add_argument("--plot", default=None, help="also write a safety-against-utility plot here (PNG; not inside metrics/plots, which the report stage owns)")
    p.set_defaults(func=_cmd_frontier)

    p = sub.add_parser(
        "probe",
        help="how well a linear readout of the model's own hidden states separates each suite's labels "
        "(trained on the training prompts, and its ceiling by grouped cross-validation inside the suite)",
        description="A minute on a CPU, no DPO step: a logistic probe per layer, trained on the training prompts' labels "
        "and applied to every suite partition (transfer), beside the same probe cross-validated inside the suite, folds "
        "grouped by compound (ceiling). Safety = illegitimate prompts flagged, utility = legitimate ones passed.",
    )
    p.add_argument("--model", default="models/base", help="transformers checkpoint (default: %(default)s)")
    p.add_argument("--adapter", default=None, help="a PEFT adapter to merge first, e.g. models/dpo (default: none)")
    p.add_argument("--train", default="data/train_dpo.parquet", help="training pairs with prompt and label (default: %(default)s)")
    p.add_argument("--suite", action="append", default=None, help="a suite parquet (repeatable; default: every data/suites/*.parquet)")
    p.add_argument("--layers", default=None, help="comma-separated hidden-state indices, 0 = embeddings (default: every 4th, and the last)")
    p.add_argument("--output", default=None, help="also write the full report as JSON here")
    p.set_defaults(func=_cmd_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LibraError as exc:
        return report(exc)


if __name__ == "__main__":
    sys.exit(main())
