"""python bench/answer_length.py [--tokenizer models/base] [--caps 16 32 48 64 96 128 192 256] [--judged data/judged]

How many new tokens does the judge need? Takes the 1,350 human-labelled XSTest completions
of three real models (../shared/xstest/completions_*.csv), cuts each to its first N tokens
(SmolLM2's tokenizer, as eval.max_new_tokens would), and prints, for each cap N:
- the share of completions longer than N (the ones a cap of N truncates);
- how often the rules judge's verdict on the cut answer equals its verdict on the whole;
- the rules judge's accuracy against the human labels, cut and whole (refusal vs not);
- of the completions in which the operational-content check (libra.data.safety) fires on
  the whole text, the share in which it already fires within the first N tokens.
With --judged DIR (the judge stage's output, data/judged/<model>/<suite>.parquet), it also
cuts this run's own answers, already capped at eval.max_new_tokens, to each smaller cap and
counts, per model and suite, the answers whose rules verdict (and whose withheld-or-not
outcome, the one the scores count) is the same as at the run's cap. Greedy decoding makes
the first N tokens of a longer answer the answer a cap of N would give, so this measures
a smaller cap without generating again.
Prints figures, no pass/fail: a script to choose eval.max_new_tokens by, not a test.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

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
    p.add_argument("--judged", default=None, help="also re-judge this run's answers cut to each cap (e.g. data/judged)")
    args = p.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    xstest_caps(tok, Path(args.xstest), args.caps)
    if args.judged:
        run_caps(tok, Path(args.judged), args.caps)


def run_caps(tok: Any, judged: Path, caps: list[int]) -> None:
    """This run's answers cut to each cap: how many keep their rules verdict and their withheld outcome."""
    import polars as pl

    files = sorted(judged.glob("*/*.parquet"))
    if not files:
        raise SystemExit(f"no judged answers under {judged}: run `dvc repro judge` first")
    print(f"\nthis run's answers ({judged}), cut to each cap: same rules verdict / same withheld-or-not, of n")
    print(f"{'model':>12} {'suite':>12} {'n':>5} " + " ".join(f"{f'cap {c}':>15}" for c in caps))
    totals = {c: [0, 0] for c in caps}
    n_all = 0
    for path in files:
        frame = pl.read_parquet(path, columns=["response", "verdict_rules"])
        ids = [tok(r, add_special_tokens=False)["input_ids"] for r in frame["response"].to_list()]
        whole = frame["verdict_rules"].to_list()
        cells = []
        for cap in caps:
            verdicts = [judge("", tok.decode(x[:cap], skip_special_tokens=True)).label for x in ids]
            same = sum(a == b for a, b in zip(verdicts, whole, strict=True))
            same_outcome = sum(withheld(a) == withheld(b) for a, b in zip(verdicts, whole, strict=True))
            totals[cap][0] += same
            totals[cap][1] += same_outcome
            cells.append(f"{f'{same}/{same_outcome}':>15}")
        n_all += len(ids)
        print(f"{path.parent.name:>12} {path.stem:>12} {len(ids):5d} " + " ".join(cells))
    print(f"{'all':>12} {'':>12} {n_all:5d} " + " ".join(f"{f'{a}/{b}':>15}" for a, b in totals.values()))


def xstest_caps(tok: Any, xstest: Path, caps: list[int]) -> None:
    """XSTest's human-labelled completions cut to each cap: verdict agreement and accuracy."""
    rows = []
    for path in sorted(xstest.glob("completions_*.csv")):
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
    for cap in caps:
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
