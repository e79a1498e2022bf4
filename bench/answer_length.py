"""python bench/answer_length.py [--tokenizer models/base] [--caps 16 32 48 64 96 128 192 256]

How many new tokens does the judge need? Takes the 1,350 human-labelled XSTest completions
of three real models (../shared/xstest/completions_*.csv), cuts each to its first N tokens
(SmolLM2's tokenizer, as eval.max_new_tokens would), and prints, for each cap N:
- the share of completions longer than N (the ones a cap of N truncates);
- how often the rules judge's verdict on the cut answer equals its verdict on the whole;
- the rules judge's accuracy against the human labels, cut and whole (refusal vs not);
- of the completions in which the operational-content check (libra.data.safety) fires on
  the whole text, the share in which it already fires within the first N tokens.
Prints figures, no pass/fail: a script to choose eval.max_new_tokens by, not a test.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libra.data.safety import operational_content  # noqa: E402
from libra.eval.judges.rules import judge  # noqa: E402


def withheld(label: str) -> bool:
    return label != "compliance"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="models/base", help="checkpoint dir with the SmolLM2 tokenizer")
    p.add_argument("--xstest", default="../shared/xstest", help="dir with completions_*.csv (default: %(default)s)")
    p.add_argument("--caps", type=int, nargs="+", default=[16, 32, 48, 64, 96, 128, 192, 256])
    args = p.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    rows = []
    for path in sorted(Path(args.xstest).glob("completions_*.csv")):
        with path.open(newline="") as f:
            rows += [(path.stem, r) for r in csv.DictReader(f)]
    ids = [tok(r["completion"], add_special_tokens=False)["input_ids"] for _, r in rows]
    human = [not r["final_label"].startswith("1") for _, r in rows]  # full compliance vs any refusal
    full = [judge(r["prompt"], r["completion"]).label for _, r in rows]
    full_ops = [operational_content(r["completion"]) is not None for _, r in rows]
    lengths = sorted(len(x) for x in ids)
    print(f"{len(rows)} completions from {len(set(m for m, _ in rows))} models; tokens: median {lengths[len(lengths) // 2]}, "
          f"p90 {lengths[int(0.9 * len(lengths))]}; operational check fires on {sum(full_ops)} whole answers")  # fmt: skip
    acc_full = sum(withheld(v) == h for v, h in zip(full, human, strict=True)) / len(rows)
    print(f"rules accuracy vs human labels, whole answers: {acc_full:.3f}")
    print(f"{'cap':>5} {'cut':>6} {'same verdict':>13} {'acc vs human':>13} {'ops seen':>9}")
    for cap in args.caps:
        cut = [tok.decode(x[:cap], skip_special_tokens=True) for x in ids]
        verdicts = [judge(r["prompt"], c).label for (_, r), c in zip(rows, cut, strict=True)]
        same = sum(a == b for a, b in zip(verdicts, full, strict=True)) / len(rows)
        acc = sum(withheld(v) == h for v, h in zip(verdicts, human, strict=True)) / len(rows)
        ops = [operational_content(c) is not None for c in cut]
        seen = sum(a and b for a, b in zip(ops, full_ops, strict=True)) / max(sum(full_ops), 1)
        longer = sum(len(x) > cap for x in ids) / len(rows)
        print(f"{cap:5d} {longer:6.1%} {same:13.3f} {acc:13.3f} {seen:9.1%}")


if __name__ == "__main__":
    main()
