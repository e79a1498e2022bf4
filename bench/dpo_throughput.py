"""DPO training throughput: TRL DPOTrainer with its defaults vs libra's dpo path, one process.

    python bench/dpo_throughput.py --model models/base --train data/train.parquet [--steps 5 --rounds 2]

Both train the same LoRA (params `dpo.lora.*`) on the same pairs, batch (`dpo.batch_size`),
loss, beta, learning rate and max_length; everything else is each path's own:
- TRL defaults: `DPOConfig` as shipped (gradient checkpointing on, `bf16=True`, which does
  not autocast on CPU, reference forward on every step, random batches), plus
  `use_cpu=True` on CPU, without which that `bf16=True` refuses to start;
- libra: `libra.train.dpo` (pre-tokenised pairs with precomputed reference log-probs,
  bf16 autocast on CPU, no gradient checkpointing, length-bucketed batches).
The two run in alternating rounds of `--steps` steps (the first step of each round is
warm-up and not counted), so a busy machine slows both alike. tokens/s counts non-pad
tokens of the chosen and rejected sequences. The FLOP floor is (6 + 2) x params x tokens
(policy forward+backward plus a reference forward) over the bf16 matmul rate measured
here on the model's own GEMM shapes. libra's one-off reference pass is timed and printed
apart: it is paid once per dataset and reused by every run of a sweep.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from libra.config import load_params
from libra.io import read_parquet
from libra.train.dpo import LibraDPOTrainer, dpo_config, lora_config, training_dataset
from libra.train.encode import conversation, encode_pairs
from libra.train.ref_logps import reference_logps
from libra.train.runtime import seed_everything, set_threads


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step and the tokens TRL counted in it."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[float] = []
        self._t0 = 0.0
        self._last_tokens: float | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.times.append(time.perf_counter() - self._t0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if logs and "num_tokens" in logs:
            prev = self._last_tokens or 0.0
            self.tokens.append(logs["num_tokens"] - prev)
            self._last_tokens = logs["num_tokens"]


def matmul_gflops(dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 1.5) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def run_round(trainer: Any, timer: StepTimer, steps: int) -> tuple[list[float], list[float]]:
    """`steps` optimizer steps from a fresh loop; returns (seconds, tokens) of steps 2.."""
    n_times, n_tokens = len(timer.times), len(timer.tokens)
    trainer.args.max_steps = steps
    trainer.optimizer, trainer.lr_scheduler = None, None
    trainer.train()
    return timer.times[n_times + 1 :], timer.tokens[n_tokens + 1 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/base", help="base checkpoint dir (default: %(default)s)")
    parser.add_argument("--train", default="data/train.parquet", help="training pairs (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per round, first is warm-up (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per path (default: %(default)s)")
    args = parser.parse_args()

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    params = load_params().dpo
    threads = set_threads(params.num_threads)
    seed_everything(params.seed)
    pairs = read_parquet(args.train)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    out = Path(tempfile.mkdtemp(prefix="dpo_bench_"))

    # Matmul rate on the model's MLP GEMM shape (tokens of one batch x hidden x intermediate)
    cfg = AutoModelForCausalLM.from_pretrained(args.model).config
    m = params.batch_size * 2 * 128
    rate = {d: matmul_gflops(getattr(torch, d), m, cfg.hidden_size, cfg.intermediate_size) for d in ("float32", "bfloat16")}

    # TRL defaults: conversational pairs, TRL tokenises; only the shared knobs are set
    trl_pairs = Dataset.from_list([
        {"prompt": conversation(r["prompt"]), "chosen": conversation(r["prompt"], r["chosen"])[1:],
         "rejected": conversation(r["prompt"], r["rejected"])[1:]}
        for r in pairs.iter_rows(named=True)
    ])
    trl_timer = StepTimer()
    trl_trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(args.model, dtype="float32"),
        args=DPOConfig(
            output_dir=str(out / "trl"), per_device_train_batch_size=params.batch_size, learning_rate=params.learning_rate,
            beta=params.beta, loss_type=list(params.loss_type), max_length=params.max_length, logging_steps=1,
            save_strategy="no", report_to="none", seed=params.seed, disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),  # TRL's default bf16=True refuses a CPU run without it
        ),
        train_dataset=trl_pairs, processing_class=tokenizer, peft_config=lora_config(params), callbacks=[trl_timer],
    )

    # libra: encode once, reference pass once (timed apart), then train
    start = time.perf_counter()
    encoded = encode_pairs(pairs, tokenizer, params.max_prompt_length, params.max_length)
    ref = reference_logps(AutoModelForCausalLM.from_pretrained(args.model, dtype="float32"), encoded, tokenizer.pad_token_id)
    ref_seconds = time.perf_counter() - start
    libra_timer = StepTimer()
    libra_args = dpo_config(params, out / "libra", world=1, on_cpu=not torch.cuda.is_available())
    libra_args.save_strategy, libra_args.disable_tqdm = "no", True
    libra_trainer = LibraDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(args.model, dtype="float32"), ref_model=None, args=libra_args,
        train_dataset=training_dataset(encoded, ref, "bench"), processing_class=tokenizer,
        peft_config=lora_config(params), callbacks=[libra_timer], cpu_bf16=params.bf16_autocast and not torch.cuda.is_available(),
    )

    results: dict[str, tuple[list[float], list[float]]] = {"trl": ([], []), "libra": ([], [])}
    for _ in range(args.rounds):
        for name, trainer, timer in (("trl", trl_trainer, trl_timer), ("libra", libra_trainer, libra_timer)):
            secs, toks = run_round(trainer, timer, args.steps)
            results[name][0].extend(secs)
            results[name][1].extend(toks)

    n_params = sum(p.numel() for p in libra_trainer.model.parameters())
    print(f"model {args.model}: {n_params / 1e6:.1f}M params; {len(pairs)} pairs; batch {params.batch_size}; {threads} threads")
    print(f"matmul: fp32 {rate['float32']:.0f} GFLOP/s, bf16 {rate['bfloat16']:.0f} GFLOP/s ({m}x{cfg.hidden_size}x{cfg.intermediate_size})")
    tps = {}
    for name, (secs, toks) in results.items():
        tps[name] = sum(toks) / sum(secs)
        print(f"{name:6s} {statistics.mean(secs):6.2f} s/step (median {statistics.median(secs):.2f}, {len(secs)} steps), "
              f"{statistics.mean(toks):.0f} tokens/step, {tps[name]:.0f} tokens/s")
    floor_tps = rate["bfloat16"] * 1e9 / (8 * n_params)
    print(f"speed-up libra / TRL defaults: {tps['libra'] / tps['trl']:.2f}x")
    print(f"FLOP floor: {floor_tps:.0f} tokens/s (8 x params x tokens at the bf16 rate); "
          f"libra takes {floor_tps / tps['libra']:.2f}x the floor, TRL defaults {floor_tps / tps['trl']:.2f}x")
    print(f"libra one-off reference pass: {ref_seconds:.1f}s for {len(pairs)} pairs "
          f"(= {ref_seconds / statistics.mean(results['libra'][0]):.1f} libra steps)")


if __name__ == "__main__":
    main()
