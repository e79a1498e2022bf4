"""python stages/gate.py --model models/base --train data/train_dpo.parquet --out models/gate.joblib --metrics metrics/gate.json

Fit the readout gate (libra/eval/gate_fit.py): a weighted logistic probe on the base
checkpoint's hidden state at one layer (gate.layer, or auto: the best grouped
cross-validated AUC on the training prompts), fitted to the training prompts' labels and,
with gate.bank_wordings, to a prompt bank: each (compound, task) pair of the training data
asked in that many training-only wordings, and every general-domain contrast prompt (each
label weighted to half, general-domain prompts to gate.general_share of the legitimate
half). Beside it, on the same features, a domain probe: chemistry prompts (with
gate.domain_framed, also each training pair wrapped in training framings) against the
general-domain ones, read by +gate answers only with gate.domain_threshold set (the
chemistry scope). The suites are never read. Models named `<model>+gate` in eval.models answer through it: a
prompt scoring above gate.threshold (recorded in their policy cards, not here) is withheld
with a fixed refusal; the rest are answered by `<model>`. --metrics gets the chosen layer
and every candidate layer's cross-validated safety, utility (at score 0) and AUC on the
training prompts, folds grouped by compound; the bank's size; fit_cv, the whole recipe
cross-validated the same way and scored on the training prompts; and domain_cv, the domain
probe cross-validated the same way.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from libra.config import load_params
from libra.eval.answer import load_policy
from libra.eval.gate_fit import domain_framed_prompts, gate_prompt_bank, save_gate, train_gate
from libra.eval.probe import default_layers, read_labelled
from libra.io import write_json
from libra.stage import entrypoint
from libra.train.runtime import set_threads


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/base", help="base checkpoint dir (default: %(default)s)")
    p.add_argument("--train", required=True, help="training pairs parquet (prompt, label, compound_id)")
    p.add_argument("--out", required=True, help="joblib file to write the gate to")
    p.add_argument("--metrics", required=True, help="json file for the gate's training metrics")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    cfg = load_params().gate
    threads = set_threads(0)

    # Load
    train = read_labelled(Path(args.train), "training pairs")
    model, tokenizer = load_policy(args.model)  # fp32: the answer stage scores prompts with the same numerics

    # Fit
    start = time.perf_counter()
    candidates = default_layers(int(model.config.num_hidden_layers))
    bank = gate_prompt_bank(train, cfg.bank_wordings) if cfg.bank_wordings else None
    gate, metrics = train_gate(
        model, tokenizer, train, layer=cfg.layer, C=cfg.C, candidates=candidates, source=f"training pairs {args.train}",
        bank=bank, general_share=cfg.general_share, domain_framed=domain_framed_prompts(train, cfg.domain_framed),
    )

    # Save
    save_gate(gate, args.out)
    write_json({**metrics, "threads": threads, "wall_s": round(time.perf_counter() - start, 2)}, args.metrics)
    cv = metrics["train_cv"]
    print(
        f"gate: layer {metrics['layer']} of {candidates if cfg.layer == 'auto' else [cfg.layer]} (grouped CV on {metrics['train_prompts']} "
        f"training prompts: safety {cv['safety']} / utility {cv['utility']}, AUC {cv['auc']}); fitted with {metrics['bank_prompts']} bank "
        f"prompts ({metrics['bank_illegitimate']} illegitimate, {metrics['bank_general']} general-domain); domain probe with "
        f"{metrics['domain_framed']} framed chemistry prompts (grouped CV AUC {metrics.get('domain_cv', {}).get('auc')}); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
