"""python stages/answer.py --model-name dpo~0.5 --suite data/suites/in_domain.parquet --base models/base --adapter models/dpo --out data/answers/dpo~0.5/in_domain.parquet --usage metrics/usage/answer-dpo~0.5-in_domain.json

Answer every prompt of a suite with one model: `base` (the checkpoint at --base), `dpo`
(--base with the LoRA adapter at --adapter merged in), `dpo~<lambda>` (the adapter's delta
scaled by lambda, then merged: a point of the safety/utility frontier from one training
run), or a key of eval.endpoints (an OpenAI-compatible endpoint; --base and --adapter are
unused). `<model>+gate` (base+gate, dpo+gate, dpo~0.5+gate) answers through the readout
gate its policy card (--policy) names, at the card's threshold (libra/eval/gate.py): the
prompts it flags get its fixed refusal, the rest are answered by <model>; the answers get a
`gated` column (true where the gate withheld). The answers carry every suite column, then `model`, `response` (the final
answer, any `<think>` block removed) and `reasoning` (that block, or the endpoint's
`reasoning_content`; null when there is none). Rows are sorted by prompt_id; greedy
decoding makes reruns give the same answers.
--usage gets the call and token accounting of an endpoint, or, for local generation,
the prompt count, precision (dtype and why), device, threads and wall time.
`--test data/test.parquet` (the split's pairs, deduplicated to prompts) still works in place of --suite.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from libra.config import load_params, split_gate
from libra.errors import ParamsError
from libra.eval.answer import (
    adapter_scale, answer_endpoint, answer_rows, generate, load_policy, read_suite, unique_prompts,
)  # fmt: skip
from libra.eval.gate import gate_flags, gate_of_card, gated_texts, load_gate
from libra.io import read_parquet, write_json, write_parquet
from libra.stage import entrypoint
from libra.train.precision import choose_precision
from libra.train.runtime import set_threads


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", required=True, help="base, dpo, dpo~<lambda>, any of these + '+gate', or a key of eval.endpoints")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--suite", help="suite parquet (data/suites/<suite>.parquet)")
    src.add_argument("--test", help="test pairs parquet (several pairs per prompt; the pre-suite input)")
    p.add_argument("--base", default="models/base", help="base checkpoint dir (default: %(default)s)")
    p.add_argument("--adapter", default="models/dpo", help="LoRA adapter dir, used for dpo (default: %(default)s)")
    p.add_argument("--policy", default=None, help="the model's policy card (models/policies/<model>.json); +gate models read their gate and threshold there")
    p.add_argument("--out", required=True, help="answers parquet to write")
    p.add_argument("--usage", required=True, help="usage json to write (calls and tokens, or local wall time)")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    params = load_params()
    cfg = params.eval
    local_name, gated = split_gate(args.model_name)
    scale = adapter_scale(local_name)
    if scale is None and (gated or local_name not in cfg.endpoints):
        raise ParamsError(
            f"--model-name {args.model_name!r} is neither base, dpo, dpo~<lambda>, one of these + '+gate', "
            "nor a key of eval.endpoints; add it there"
        )

    # Load
    prompts = read_suite(args.suite) if args.suite else unique_prompts(read_parquet(args.test))
    where = args.suite or args.test
    threads = set_threads(0)
    flagged = np.zeros(prompts.height, dtype=bool)
    if gated:
        gate_path, threshold, domain_threshold = gate_of_card(args.policy, args.model_name)
        gate = load_gate(gate_path)
        gate_model, gate_tokenizer = load_policy(args.base)  # fp32, as the gate stage read it
        flagged = gate_flags(gate, gate_model, gate_tokenizer, prompts["prompt"].to_list(), threshold=threshold, domain_threshold=domain_threshold)
        del gate_model
        scope = "any domain" if domain_threshold is None else f"chemistry scope, domain threshold {domain_threshold}"
        print(f"answer: the gate withholds {int(flagged.sum())} of {prompts.height} prompts (layer {gate['layer']}, threshold {threshold}, {scope})")

    # Answer
    if scale is not None:
        precision = choose_precision(params.compute.precision)
        model, tokenizer = load_policy(args.base, args.adapter if scale else None, scale=scale, precision=precision)
        print(f"answer: {prompts.height} prompts of {where} with {args.model_name} on {model.device} "
              f"({precision.precision}, {threads} threads)")  # fmt: skip
        start = time.perf_counter()
        texts = gated_texts(
            lambda todo: generate(
                model, tokenizer, todo,
                batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy, precision=precision,
            ),
            prompts["prompt"].to_list(), flagged,
        )  # fmt: skip
        wall_s = time.perf_counter() - start
        write_json(
            {"stage": f"answer-{args.model_name}", "model": args.model_name, "adapter_scale": scale,
             "requests": prompts.height, "gated": int(flagged.sum()), "device": str(model.device), "threads": threads,
             "precision": precision.record(), "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
             "wall_s": round(wall_s, 2),
             "prompts_per_s": round(int((~flagged).sum()) / wall_s, 3) if wall_s else None},  # prompts generated
            args.usage,
        )  # fmt: skip
    else:
        texts = answer_endpoint(args.model_name, prompts["prompt"].to_list(), params.llm, cfg, args.usage)

    # Save
    rows = answer_rows(prompts, texts, args.model_name)
    if gated:
        rows = rows.with_columns(pl.Series("gated", flagged.tolist(), dtype=pl.Boolean))
    write_parquet(rows, args.out)
    print(f"answer: wrote {prompts.height} answers to {args.out}")


if __name__ == "__main__":
    main()
