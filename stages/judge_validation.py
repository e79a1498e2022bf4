"""python stages/judge_validation.py --xstest ../shared/xstest --classifier models/judge_classifier.joblib --out metrics/judge/validation.json

Validate the judge the pipeline uses (judge.judges fused by judge.fusion) against XSTest's
human labels, leaving one model out (libra/eval/judges/validation.py): for each of XSTest's
models, the judges are developed without it and scored on its completions. --out gets the
table (each judge and the fusion, each held-out model), the worst held-out model, the
full-set figures, how many verdicts each judge changes in the fusion, and the pooled
held-out confusion of the fused judge ({tp, fn, tn, fp}, positive = withheld) with its
sensitivity and specificity: what `stages/score.py --validation` corrects rates with.
XSTest's completions are read where they lie (--xstest, default $LIBRA_XSTEST_DIR or
../shared/xstest), never copied into the project. The LLM judge, when selected, is served
as llm.judge says; its usage goes to --usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from libra.config import load_params
from libra.errors import ParamsError
from libra.eval.judge import open_judges
from libra.eval.judges.validation import fixed, lomo
from libra.eval.judges.xstest import load_xstest, xstest_dir
from libra.io import write_json
from libra.llm.client import Usage, write_usage
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--xstest", type=Path, default=None, help="XSTest folder with completions_*.csv (default: $LIBRA_XSTEST_DIR or ../shared/xstest)")
    p.add_argument("--classifier", default="models/judge_classifier.joblib", help="trained classifier judge (default: %(default)s)")
    p.add_argument(
        "--folds", type=int, default=1,
        help="prompt-grouped folds for cross-fitting (default: %(default)s: the pipeline's judges learn nothing from XSTest, so one pass)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="json file for the validation table and the fused judge's confusion")
    p.add_argument("--usage", default="metrics/usage/judge-validation.json", help="LLM usage json (default: %(default)s)")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    params = load_params()
    cfg = params.judge
    if cfg.fusion == "llm_only" and "llm" not in cfg.judges:
        raise ParamsError("params: judge.fusion is llm_only but judge.judges lacks llm; add llm or choose vote")
    if args.folds < 1:
        raise ParamsError(f"--folds {args.folds}: must be at least 1")

    # Load
    directory = args.xstest or xstest_dir()
    if not any(Path(directory).glob("completions_*.csv")):
        # No human-labelled completions on this machine: the pipeline still runs, the rates stay
        # raw, and every metrics file and the report say why.
        reason = f"no XSTest completions_*.csv in {directory}; set judge_validation.xstest_dir to XSTest's folder"
        print(f"warning: judge validation skipped: {reason}; judge-corrected rates will be null", file=sys.stderr)
        write_usage(Usage(stage="judge-validation", model="none"), args.usage)
        write_json({"source": str(directory), "available": False, "reason": reason,
                    "judges": list(cfg.judges), "fusion": cfg.fusion}, args.out)  # fmt: skip
        return
    data = load_xstest(directory)

    # Validate
    with open_judges(cfg.judges, params, classifier_path=args.classifier, stage="judge-validation", usage_path=args.usage) as judges:
        result = lomo(data, {name: fixed(judge) for name, judge in judges.items()}, fusion=cfg.fusion, folds=args.folds)

    # Save
    if "llm" not in cfg.judges:  # no LLM call: the usage file says so
        write_usage(Usage(stage="judge-validation", model="none"), args.usage)
    write_json({"source": str(directory), **result}, args.out)
    rows = ", ".join(f"{m} {d['fused']['accuracy']:.3f}" for m, d in result["held_out"].items())
    print(
        f"judge validation: {'+'.join(result['judges'])} ({cfg.fusion}) held out: {rows}; worst "
        f"{result['worst_held_out']['model']} {result['worst_held_out']['accuracy']:.3f}; pooled sensitivity "
        f"{result['sensitivity']}, specificity {result['specificity']} on {result['n']} completions"
    )


if __name__ == "__main__":
    main()
