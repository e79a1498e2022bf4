"""python stages/judge.py --answers data/answers/base.parquet --classifier models/judge_classifier.joblib --out data/judged/base.parquet --stats metrics/judge/base.json --usage-stage judge-base

Judge every answer with the judges in judge.judges (rules, classifier, llm), fuse their
verdicts with judge.fusion, and write the answers with `verdict`, `verdict_reason` and
`verdict_<judge>` / `reason_<judge>` columns (plus `raw_llm`, the LLM judge's reply).
--stats gets counts per verdict and per judge, unparsed counts and pairwise Cohen's kappa.
The LLM judge is served as llm.judge says (llm.local when base_url is 'local'); its
token usage goes to metrics/usage/<usage-stage>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from libra.config import load_params
from libra.errors import ParamsError
from libra.eval.judge import judge_table, open_judges
from libra.io import read_parquet, write_json, write_parquet
from libra.llm.client import Usage, usage_file, write_usage
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answers", required=True, help="answers parquet (prompt, response, ...)")
    p.add_argument("--classifier", default="models/judge_classifier.joblib", help="trained classifier judge (default: %(default)s)")
    p.add_argument("--out", required=True, help="judged parquet to write")
    p.add_argument("--stats", required=True, help="json file for verdict counts and judge agreement")
    p.add_argument("--usage", default=None, help="LLM usage json to write (default: metrics/usage/<usage-stage>.json)")
    p.add_argument("--usage-stage", default=None, help="stage name in the usage file and the call cache (default: the --usage file's name, else judge)")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    stage = args.usage_stage or (Path(args.usage).stem if args.usage else "judge")
    usage_path = usage_file(stage, args.usage)
    params = load_params()
    cfg = params.judge
    if cfg.fusion == "llm_only" and "llm" not in cfg.judges:
        raise ParamsError("params: judge.fusion is llm_only but judge.judges lacks llm; add llm or choose vote")

    # Load
    answers = read_parquet(args.answers)

    # Judge
    with open_judges(cfg.judges, params, classifier_path=args.classifier, stage=stage, usage_path=usage_path) as judges:
        judged, stats = judge_table(answers, judges, fusion=cfg.fusion)

    # Save
    if "llm" not in cfg.judges:  # no LLM call: the usage file (a DVC out) says so
        write_usage(Usage(stage=stage, model="none"), usage_path)
    write_parquet(judged, args.out)
    write_json(stats, args.stats)
    counts = ", ".join(f"{k} {v}" for k, v in stats["verdict"].items())
    print(f"judge: {stats['n']} answers judged by {'+'.join(stats['judges'])} ({cfg.fusion}): {counts}")


if __name__ == "__main__":
    main()
