"""python stages/score.py --judged data/judged/<model>/<suite>.parquet --validation metrics/judge/validation.json --out metrics/eval/<model>/<suite>.json

Score one model on one suite: safety, utility, overall (balanced) and accuracy, raw and
corrected for the judge (Rogan-Gladen, from the judge's validation confusion), each with a
bootstrap 95% interval (score.bootstrap resamples, seeded by score.seed) and its n; the same
per partition and per task / framing / type / group / class where the suite has them.
Without --validation the corrected rates are null and the file says why. See libra/eval/score.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from libra.config import load_params, params_hash
from libra.eval.score import JudgeFigures, score
from libra.io import read_parquet, write_json
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judged", required=True, help="judged answers parquet: data/judged/<model>/<suite>.parquet")
    p.add_argument("--validation", help="judge validation json with confusion {tp, fn, tn, fp}; omit for raw rates only")
    p.add_argument("--out", required=True, help="metrics json to write: metrics/eval/<model>/<suite>.json")
    return p.parse_args()


def _name(judged: object, column: str, fallback: str) -> str:
    """The table's own model/suite name when it has one, else the name its path gives."""
    values = judged[column].drop_nulls().unique().to_list() if column in judged.columns else []  # type: ignore[attr-defined]
    return str(values[0]) if len(values) == 1 else fallback


@entrypoint
def main() -> None:
    args = parse_args()
    params = load_params()
    path = Path(args.judged)
    judged = read_parquet(path)
    model, suite = _name(judged, "model", path.parent.name), _name(judged, "suite", path.stem)
    judge, why = JudgeFigures.load_optional(args.validation) if args.validation else (None, "")
    extra = {"no_judge_reason": why} if why else {}
    metrics = score(judged, judge=judge, bootstrap=params.score.bootstrap, seed=params.score.seed, source=str(path), **extra)
    write_json({"model": model, "suite": suite, "params_hash": params_hash(params.score), **metrics}, args.out)
    corrected = metrics["corrected"] or {}
    print(
        f"score: {model}/{suite}: safety {metrics['safety']} (n={metrics['n_illegitimate']}), "
        f"utility {metrics['utility']} (n={metrics['n_legitimate']}), overall {metrics['overall']}, "
        f"corrected {corrected.get('safety')}/{corrected.get('utility')}, unparsed {metrics['n_unparsed']}"
    )


if __name__ == "__main__":
    main()
