r"""Build one evaluation suite: a table of labelled prompts (no answers).

    python stages/suites.py --suite in_domain --out data/suites/in_domain.parquet \
        --compounds data/compounds.parquet --train data/train.parquet --test data/test.parquet \
        --xstest data/xstest/xstest_prompts.csv --stats metrics/data/suites/in_domain.json

Reads params `eval.suites.<suite>` (a builtin, in_domain or xstest, or a user file given by
`path`: .jsonl, .csv or .parquet with columns prompt and label) and `seeds.tasks` /
`seeds.policy` (the labels of in_domain). Until `eval.suites` is in params.yaml, the
builtins' defaults apply (libra.eval.suites.DEFAULT_SUITES). The stats file holds counts
per partition and label, and the share of prompts sharing a word 8-gram with a training
prompt (compound names, SMILES and CAS numbers masked).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from libra.config import load_params
from libra.errors import InputError, ParamsError
from libra.eval.overlap import overlapping
from libra.eval.suites import (
    DEFAULT_SUITES,
    SuiteSpec,
    build_in_domain,
    build_xstest,
    ignored_columns,
    load_suite_file,
    read_xstest,
    suite_stats,
    unseen_compounds,
)
from libra.io import read_parquet, write_json, write_parquet
from libra.stage import entrypoint


def suite_specs(params: object) -> dict[str, SuiteSpec]:
    specs = getattr(getattr(params, "eval", None), "suites", None)
    return dict(specs) if specs else dict(DEFAULT_SUITES)


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="suite name: a key of eval.suites (default: in_domain, xstest)")
    parser.add_argument("--out", required=True, help="suite parquet to write (data/suites/<suite>.parquet)")
    parser.add_argument(
        "--compounds", default="data/compounds.parquet", help="resolved catalog, for in_domain (default: %(default)s)"
    )
    parser.add_argument(
        "--train",
        default="data/train.parquet",
        help="training split: in_domain's seen compounds, and the overlap check (default: %(default)s)",
    )
    parser.add_argument(
        "--test",
        default="data/test.parquet",
        help="test split: in_domain's first unseen compounds (default: %(default)s)",
    )
    parser.add_argument(
        "--xstest", default="data/xstest/xstest_prompts.csv", help="XSTest prompts, for xstest (default: %(default)s)"
    )
    parser.add_argument("--stats", default=None, help="json with counts and training overlap (default: none written)")
    args = parser.parse_args()

    # Load
    params = load_params()
    specs = suite_specs(params)
    if args.suite not in specs:
        raise ParamsError(
            f"params: suite {args.suite!r} is not in eval.suites ({', '.join(sorted(specs))}); add it there"
        )
    spec = specs[args.suite]
    train = read_parquet(args.train)
    ignored: list[str] = []
    extra: dict[str, object] = {}

    # Build
    if spec.builtin == "xstest":
        suite = build_xstest(read_xstest(args.xstest), spec, args.suite)
    elif spec.builtin == "in_domain":
        compounds, test = read_parquet(args.compounds), read_parquet(args.test)
        suite = build_in_domain(compounds, train, test, params.seeds, spec, args.suite)
        unseen = unseen_compounds(compounds, train, test, spec.unseen_compounds, spec.seed)
        extra["unseen_compounds_by_source"] = dict(sorted(unseen.group_by("source").len().iter_rows()))
    else:
        suite = load_suite_file(str(spec.path), args.suite)
        ignored = ignored_columns(str(spec.path))
    if suite.height == 0:
        raise InputError(f"suite {args.suite} came out empty; check eval.suites.{args.suite}")

    # Overlap with training prompts, compound identifiers masked
    mask: list[str] = []
    if "compound" in train.columns:
        mask += [c for c in train["compound"].unique().to_list() if c]
    mask += [c for c in suite["compound"].unique().to_list() if c]
    if Path(args.compounds).is_file():  # only a mask source here; a user suite builds without it
        cat = read_parquet(args.compounds)
        mask += [v for col in ("name", "smiles", "cas") if col in cat.columns for v in cat[col].to_list() if v]
    hits = set(overlapping(suite["prompt"].to_list(), train["prompt"].unique().to_list(), n=8, mask=mask))
    by_partition = {
        p: round(float(g["prompt"].is_in(sorted(hits)).mean()), 4)
        for (p,), g in sorted(suite.group_by("partition"), key=lambda kv: kv[0])
    }

    # Save
    write_parquet(suite, args.out)
    stats = (
        suite_stats(suite)
        | {
            "train_overlap_8gram": {
                "prompts": len(hits),
                "share": round(len(hits) / suite.height, 4),
                "by_partition": by_partition,
            },
            "ignored_columns": ignored,
        }
        | extra
    )
    if args.stats:
        write_json(stats, args.stats)
    note = f"; ignored columns: {', '.join(ignored)}" if ignored else ""
    print(
        f"suite {args.suite}: {suite.height} prompts {stats['by_partition_label']}; 8-gram overlap with train {len(hits)}{note}"
    )


if __name__ == "__main__":
    main()
