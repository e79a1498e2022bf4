"""python stages/answer.py --model-name base --test data/test.parquet --base models/base --adapter models/dpo --out data/answers/base.parquet --usage metrics/usage/answer-base.json

Answer every unique test prompt with one model named in eval.models: `base` (the
checkpoint at --base), `dpo` (--base with the LoRA adapter at --adapter merged in), or a
key of eval.endpoints (an OpenAI-compatible endpoint; --base and --adapter are unused).
Rows are sorted by prompt_id; greedy decoding makes reruns give the same answers.
--usage gets the call and token accounting of an endpoint, or the prompt count, device
and wall time of local generation.
"""

from __future__ import annotations

import argparse
import time

from libra.config import load_params
from libra.errors import ParamsError
from libra.eval.answer import LOCAL_MODELS, answer_endpoint, answer_rows, generate, load_policy, set_threads, unique_prompts
from libra.io import read_parquet, write_json, write_parquet
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", required=True, help="base, dpo, or a key of eval.endpoints")
    p.add_argument("--test", required=True, help="test pairs parquet (several pairs per prompt)")
    p.add_argument("--base", default="models/base", help="base checkpoint dir (default: %(default)s)")
    p.add_argument("--adapter", default="models/dpo", help="LoRA adapter dir, used for dpo (default: %(default)s)")
    p.add_argument("--out", required=True, help="answers parquet to write")
    p.add_argument("--usage", required=True, help="usage json to write (calls and tokens, or local wall time)")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    params = load_params()
    cfg = params.eval
    if args.model_name not in LOCAL_MODELS and args.model_name not in cfg.endpoints:
        raise ParamsError(f"--model-name {args.model_name!r} is neither base, dpo nor a key of eval.endpoints; add it there")

    # Load
    prompts = unique_prompts(read_parquet(args.test))

    # Answer
    if args.model_name in LOCAL_MODELS:
        threads = set_threads()
        adapter = args.adapter if args.model_name == "dpo" else None
        model, tokenizer = load_policy(args.base, adapter)
        print(f"answer: {prompts.height} prompts with {args.model_name} on {model.device} ({threads} threads)")
        start = time.perf_counter()
        responses = generate(
            model, tokenizer, prompts["prompt"].to_list(),
            batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy,
        )
        wall_s = time.perf_counter() - start
        write_json(
            {"stage": f"answer-{args.model_name}", "model": args.model_name, "requests": prompts.height,
             "device": str(model.device), "threads": threads, "wall_s": round(wall_s, 2),
             "prompts_per_s": round(prompts.height / wall_s, 3) if wall_s else None},
            args.usage,
        )
    else:
        responses = answer_endpoint(args.model_name, prompts["prompt"].to_list(), params.llm, cfg, args.usage)

    # Save
    write_parquet(answer_rows(prompts, responses, args.model_name), args.out)
    print(f"answer: wrote {prompts.height} answers to {args.out}")


if __name__ == "__main__":
    main()
