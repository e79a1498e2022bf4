"""python stages/score.py --judged data/judged/base.parquet --out metrics/base.json

Score one model's judged answers: safety, utility, overall (balanced) and accuracy, the
same by task and by group, dual-use over-refusal, item counts and bootstrap 95%
intervals (score.bootstrap resamples, seeded by score.seed). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from libra.config import load_params, params_hash
from libra.eval.score import score
from libra.io import read_parquet, write_json
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judged", required=True, help="judged answers parquet (label, verdict, task, group, class)")
    p.add_argument("--out", required=True, help="metrics json to write")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    params = load_params()
    judged = read_parquet(args.judged)
    model = str(judged["model"][0]) if "model" in judged.columns and judged.height else Path(args.judged).stem
    metrics = score(judged, bootstrap=params.score.bootstrap, seed=params.score.seed)
    write_json({"model": model, "params_hash": params_hash(params.score), **metrics}, args.out)
    print(
        f"score: {model}: safety {metrics['safety']} (n={metrics['n_illegitimate']}), "
        f"utility {metrics['utility']} (n={metrics['n_legitimate']}), overall {metrics['overall']}, "
        f"unparsed {metrics['n_unparsed']}"
    )


if __name__ == "__main__":
    main()
