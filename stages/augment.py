"""DPO training data: self-distilled legitimate answers, benign contrast pairs, framed prompts.

    python stages/augment.py --train data/train.parquet --test data/test.parquet \
        --compounds data/compounds.parquet --model models/base --out data/train_dpo.parquet \
        --quarantine data/quarantine/augment.parquet --stats metrics/data/augment.json

Reads params `augment.*` (libra/config.py: AugmentParams), `seeds.tasks` and `seeds.policy`
(the catalog lever's labels). The base policy is loaded only when a lever needs its answers
(self_distill_legit, contrast or catalog_compounds > 0), and is asked only legitimate
chemistry prompts and benign general-domain prompts. It answers in fp32 whatever
`compute.precision` says: bf16 kernels round differently from one CPU to the next (AMX
against AVX512_BF16 changed greedy answers), and the training pairs should not depend on
them. With fp32 here, two AVX-512 machines made byte-identical pairs.
"""

from __future__ import annotations

import argparse
import time

from libra.config import load_params
from libra.data.augment import build_augmented, policy_generate
from libra.io import read_parquet, write_json, write_parquet
from libra.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="training pairs parquet (split stage output)")
    parser.add_argument("--test", required=True, help="test pairs parquet: its compounds are never trained on")
    parser.add_argument("--compounds", required=True, help="resolved compounds parquet (SMILES and CAS for framed prompts)")
    parser.add_argument("--model", required=True, help="base checkpoint dir (base_model stage output)")
    parser.add_argument("--out", required=True, help="DPO training pairs parquet to write (pair schema + source, variant)")
    parser.add_argument("--quarantine", required=True, help="quarantined candidates and self answers, with their reason")
    parser.add_argument("--stats", required=True, help="stats json: counts by source and label; in = out + quarantined")
    args = parser.parse_args()

    # Load
    all_params = load_params()
    params = all_params.augment
    train = read_parquet(args.train)
    compounds = read_parquet(args.compounds)
    start = time.perf_counter()
    generate = None
    if params.self_distill_legit or params.contrast or params.catalog_compounds:
        from libra.eval.answer import load_policy
        from libra.train.precision import choose_precision
        from libra.train.runtime import set_threads

        set_threads(0)
        precision = choose_precision("fp32")  # see the module docstring
        print(f"augment: self answers in fp32 on {precision.device} (training data must not depend on bf16 kernels)", flush=True)
        model, tokenizer = load_policy(args.model, precision=precision)
        generate = policy_generate(model, tokenizer, params)

    # Build
    out, quarantine, stats = build_augmented(
        train, compounds, params, generate or (lambda prompts: []), seeds=all_params.seeds, test=read_parquet(args.test)
    )

    # Save
    write_parquet(out, args.out)
    write_parquet(quarantine, args.quarantine)
    write_json(stats, args.stats)
    print(
        f"augment: {stats['in']} candidates -> {stats['out']} pairs {stats['by_source']}, quarantined "
        f"{stats['quarantined']} {stats['by_reason']}; self answers {stats['self_answers']['prompts_generated']} "
        f"({stats['self_answers']['chemistry_quarantined']} chemistry ones fell back); {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
