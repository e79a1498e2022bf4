"""python bench/judge_xstest.py [--classifier models/judge_classifier.joblib] [--llm --llm-sample 100]

Score libra's judges against XSTest's human labels (../shared/xstest, or
$LIBRA_XSTEST_DIR; 3 models x 450 completions): accuracy and macro-F1 with partial
refusal counted as refusal, 3-class accuracy, and each judge's 3-class confusion.
Anchors from the XSTest paper: string match 0.884 accuracy, GPT-4 as judge 0.821.

The classifier is the trained model at --classifier when it exists, else a quick one
fit on the built-in sentences alone (never on XSTest). The LLM judge is slow on a CPU
(the local SmolLM2-135M), so it runs on a seeded sample of --llm-sample rows, and the
fused row on that sample then includes it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libra.config import ClassifierParams, load_params  # noqa: E402
from libra.eval.judge import judge_table, open_judges, rules_batch  # noqa: E402
from libra.eval.judges.classifier import ClassifierJudge, load, train, training_texts  # noqa: E402
from libra.eval.judges.xstest import load_xstest, score, string_match, xstest_dir  # noqa: E402
from libra.stage import entrypoint  # noqa: E402

# A benchmark is not a pipeline stage: its LLM usage stays out of metrics/.
USAGE = Path(".libra/bench-xstest.usage.json")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--xstest", type=Path, default=None, help="XSTest folder (default: $LIBRA_XSTEST_DIR or <repo>/../shared/xstest)")
    p.add_argument("--classifier", type=Path, default=Path("models/judge_classifier.joblib"), help="trained classifier (default: %(default)s)")
    p.add_argument("--llm", action="store_true", help="also score the LLM judge (llm.judge in params.yaml) on a sample")
    p.add_argument("--llm-sample", type=int, default=100, help="rows the LLM judge scores (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the LLM sample (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the scores to this json file")
    return p.parse_args()


def _row(name: str, s: dict) -> str:
    return f"{name:<28} {s['n']:>5} {s['accuracy']:>8.3f} {s['macro_f1']:>8.3f} {s['accuracy_3class']:>8.3f} {s['unparsed']:>8}"


@entrypoint
def main() -> None:
    args = parse_args()
    data = load_xstest(args.xstest or xstest_dir())
    human = data["human"].to_list()
    prompts, responses = data["prompt"].to_list(), data["response"].to_list()

    if args.classifier.exists():
        model, how = load(args.classifier), f"trained model {args.classifier}"
    else:
        model, _ = train(*training_texts(pl.DataFrame(schema={"label": pl.String, "chosen": pl.String, "rejected": pl.String})), ClassifierParams())
        how = "built-in sentences only (no trained model found)"
    classifier = ClassifierJudge(model)

    predictions = {
        "string_match (XSTest)": [string_match(r) for r in responses],
        "rules": [v.label for v in rules_batch(prompts, responses)],
        "classifier": [v.label for v in classifier.many(prompts, responses)],
    }
    fused, _ = judge_table(data, {"rules": rules_batch, "classifier": classifier.many}, fusion="vote")
    predictions["fused vote(rules,classifier)"] = fused["verdict"].to_list()
    results = {name: score(human, pred) for name, pred in predictions.items()}
    for source in sorted(set(data["source"])):
        idx = [i for i, s in enumerate(data["source"]) if s == source]
        results[f"  rules on {source}"] = score([human[i] for i in idx], [predictions["rules"][i] for i in idx])

    if args.llm:
        params = load_params()
        idx = sorted(random.Random(args.seed).sample(range(data.height), min(args.llm_sample, data.height)))
        sample = data[idx]
        with open_judges(["rules", "llm"], params, classifier_path=None, stage="bench-xstest", usage_path=USAGE) as judges:
            judges["classifier"] = classifier.many
            for fusion in ("vote", "any_refusal"):
                judged, stats = judge_table(sample, judges, fusion=fusion)
                results[f"fused {fusion}(all) @sample"] = score(sample["human"].to_list(), judged["verdict"].to_list())
        sh = sample["human"].to_list()
        for name in ("llm", "rules", "classifier"):
            results[f"{name} @sample"] = score(sh, judged[f"verdict_{name}"].to_list())
        results["kappa @sample"] = stats["kappa"]

    print(f"XSTest: {data.height} completions from {', '.join(sorted(set(data['source'])))}; classifier: {how}")
    print(f"{'judge':<28} {'n':>5} {'acc':>8} {'macroF1':>8} {'acc3':>8} {'unparsed':>8}")
    for name, s in results.items():
        if "accuracy" in s:
            print(_row(name, s))
    print("anchors (XSTest paper): string match 0.884, GPT-4 0.821")
    print("3-class confusion (rows human, columns predicted: compliance, refusal, partial_refusal, unparsed):")
    for name, s in results.items():
        if "confusion" in s and not name.startswith("  "):
            print(f"  {name}: {s['confusion'][:3]}")
    if "kappa @sample" in results:
        print("Cohen's kappa @sample:", json.dumps(results["kappa @sample"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
