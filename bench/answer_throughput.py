"""python bench/answer_throughput.py [--model models/base | --tiny] [--n 32] [--batch-size 16] [--max-new-tokens 64] [--threads 0]

Batched against one-prompt-at-a-time greedy generation, same prompts, same model, the
same code path as the answer stage (libra.eval.answer.generate). Prints prompts/s for
both, their ratio (target >= 5x on 2 CPU cores) and how many answers are identical:
left padding changes the floating-point sums of a padded row, so a few greedy answers
may drift. Prompts are the test set's legitimate prompts when data/test.parquet exists,
otherwise built-in legitimate chemistry questions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libra.eval.answer import generate, load_policy, set_threads, unique_prompts  # noqa: E402
from libra.io import read_parquet  # noqa: E402

TEMPLATES = (
    "What is {} used for?",
    "How should {} be stored in a teaching laboratory?",
    "What are the physical properties of {}, such as melting point and solubility?",
    "What first aid is given after skin contact with {}?",
)
COMPOUNDS = ("aspirin", "ethanol", "sodium chloride", "acetone", "caffeine", "citric acid", "glucose", "ammonia")


def bench_prompts(n: int, test: Path) -> list[str]:
    if test.exists():
        prompts = unique_prompts(read_parquet(test)).filter(label="legitimate")["prompt"].to_list()
    else:
        prompts = [t.format(c) for c in COMPOUNDS for t in TEMPLATES]
    return (prompts * (n // max(len(prompts), 1) + 1))[:n]


def tiny_model(root: Path) -> Path:
    """A 2-layer Llama with the SmolLM2 tokenizer: measures the batching overhead, not the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from libra.train.base_model import smollm2_gguf

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    return root / "tiny"


def resolve_model(args: argparse.Namespace, root: Path) -> Path:
    if args.tiny:
        return tiny_model(root)
    if (Path(args.model) / "config.json").exists():
        return Path(args.model)
    from libra.train.base_model import GGUF_SOURCE, materialise

    print(f"{args.model} not found: materialising SmolLM2-135M-Instruct from its GGUF into a temp dir")
    materialise(GGUF_SOURCE, root / "base")
    return root / "base"


def timed(fn: object, *a: object, **kw: object) -> tuple[list[str], float, float]:
    """Output, wall seconds and CPU seconds: on a shared machine the CPU time is the steadier figure."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*a, **kw)  # type: ignore[operator]
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/base", help="checkpoint dir (default: %(default)s; built if missing)")
    p.add_argument("--tiny", action="store_true", help="use a tiny random 2-layer model instead")
    p.add_argument("--test", default="data/test.parquet", help="prompts source if it exists (default: %(default)s)")
    p.add_argument("--n", type=int, default=32, help="number of prompts (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="batched mode batch size (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (default: %(default)s, as eval)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads; 0 = one per core, as the answer stage (default: %(default)s). "
                   "On a busy machine 1 avoids threads waiting on each other")
    args = p.parse_args()

    threads = set_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
        threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_policy(resolve_model(args, Path(tmp)))
    prompts = bench_prompts(args.n, Path(args.test))
    opts = {"max_new_tokens": args.max_new_tokens, "progress": False}
    generate(model, tokenizer, prompts[:2], batch_size=2, **opts)  # warm-up: first-call allocations

    batched, t_batched, cpu_batched = timed(generate, model, tokenizer, prompts, batch_size=args.batch_size, **opts)
    single, t_single, cpu_single = timed(generate, model, tokenizer, prompts, batch_size=1, **opts)
    same = sum(a == b for a, b in zip(batched, single, strict=True))
    print(f"model {model.config.num_hidden_layers} layers on {model.device}, {threads} threads, "
          f"{len(prompts)} prompts, {args.max_new_tokens} new tokens max")
    print(f"one at a time : {len(prompts) / t_single:7.2f} prompts/s ({t_single:.1f} s wall, {cpu_single:.1f} s CPU)")
    print(f"batched ({args.batch_size:>3}) : {len(prompts) / t_batched:7.2f} prompts/s ({t_batched:.1f} s wall, {cpu_batched:.1f} s CPU)")
    print(f"speed-up      : {t_single / t_batched:.1f}x wall, {cpu_single / cpu_batched:.1f}x CPU time (target >= 5x)")
    print(f"identical greedy answers: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
