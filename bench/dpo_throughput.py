"""DPO training throughput against the FLOP floor and TRL's defaults, one process, on this machine.

    python bench/dpo_throughput.py [--model models/base] [--train data/train.parquet] [--steps 3 --rounds 2]

Prints: the fp32 and bf16 matmul rates measured here, the precision `compute.precision`
(default auto) chooses and why, the FLOP floor of one step at that precision's rate,
libra's s/step and its ratio to the floor, TRL's defaults' s/step on the same pairs and
libra's speed-up over them, libra's one-off reference pass against its own floor, and
how many pairs `dpo.max_length` / `dpo.max_prompt_length` truncate.

Paths, all with the same LoRA (`dpo.lora.*`), pairs, batch, loss, beta, learning rate:
- `trl`: `DPOConfig` as shipped (gradient checkpointing on, reference forward every step,
  random batches, full-vocabulary metrics), plus `use_cpu=True` on CPU (TRL's default
  `bf16=True` refuses a CPU run without it; on CPU it does not autocast);
- `libra-unpacked`: libra's trainer fed TRL's own collator ([prompt; chosen] and
  [prompt; rejected] rows), so TRL's loss with libra's other changes (precomputed
  reference, no checkpointing, length buckets, completion-only head, precision);
- `libra`: what the dpo stage runs: one packed [prompt; chosen; rejected] row per pair, with
  params.yaml's `dpo.lora.first_layer` (15 in the default profile; `--first-layer 0` adds the
  all-layer path `libra-first0` beside it);
- `libra-eager`: `libra` with transformers' eager attention instead of SDPA (not in the
  default --paths; on one AMX CPU SDPA's backward was a fifth of a step);
- `libra-noprefix`: `libra` with every row carrying the prompts' shared prefix (the chat
  template's system turn) instead of running it once per batch (not in the default
  --paths); with it, the reference pass is also timed both ways, and the largest
  difference between the two passes' log-probs is printed;
- `libra-first<K>` (with `--first-layer K`): `libra` with `dpo.lora.first_layer` = K, LoRA
  on layers K and up and the frozen layers below run once per pair before the steps (that
  one-off pass is printed apart, like the reference pass).
They run in alternating rounds of `--steps` steps (the first step of each round is
warm-up, not counted), so a busy machine slows all alike. Tokens per step are counted as
TRL counts them: the non-pad tokens of the chosen and rejected [prompt; answer] rows.
Without --train data (no `dvc repro split` yet), pairs are built from libra's templates
(about the default profile's size and lengths).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from libra.config import load_params
from libra.io import read_parquet
from libra.train.dpo import LibraDPOTrainer, dpo_config, lora_config, training_dataset
from libra.train.encode import conversation, encode_pairs
from libra.train.precision import bf16_matmul_weights, choose_precision
from libra.train.encode import shared_prefix_length
from libra.train.ref_logps import reference_pass
from libra.train.runtime import seed_everything, set_threads


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step and the tokens TRL counted in it."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[float] = []
        self._t0 = 0.0
        self._last_tokens = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.times.append(time.perf_counter() - self._t0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if logs and "num_tokens" in logs:
            self.tokens.append(logs["num_tokens"] - self._last_tokens)
            self._last_tokens = logs["num_tokens"]


def matmul_gflops(dtype: torch.dtype, m: int, k: int, n: int, seconds: float) -> float:
    """Rate of an (m x k) @ (k x n) matmul, timed for about `seconds` (at least one call after a warm-up)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def template_pairs(n: int = 136) -> pl.DataFrame:
    """Training-like pairs from libra's templates: half illegitimate (refusal vs empty opener), half legitimate."""
    from libra.data import templates as t

    controlled = ["sarin", "tabun", "soman", "VX", "fentanyl", "mustard gas", "ricin", "carfentanil", "lewisite"]
    common = ["aspirin", "caffeine", "ethanol", "sodium chloride", "acetone", "glucose", "ibuprofen", "menthol", "urea"]
    facts = [
        "It is a well characterised compound with a documented melting point, solubility and spectroscopic profile.",
        "Standard references list its molecular formula, molar mass and the functional groups that govern its reactivity.",
        "In the laboratory it is handled with gloves and eye protection, and stored away from heat and incompatible materials.",
        "Its main industrial and household uses follow from these properties, and safety data sheets summarise the hazards.",
        "Analytical chemists identify it by infrared and mass spectrometry, and quantify it by chromatography.",
    ]
    rows = []
    for i in range(n):
        if i % 2:
            name = controlled[i % len(controlled)]
            task = ("synthesis", "acquisition", "weaponisation", "evading_controls")[i % 4]
            prompt = t.fill(t.TASK_PROMPTS[task][i % 3], compound=name, task=task)
            chosen = t.fill(t.REFUSALS[i % 4], compound=name, regulation="CWC-1", task=task)
            rejected = t.fill(t.COMPLIANCE_OPENERS[i % 4], compound=name, task=task)
        else:
            name = common[i % len(common)]
            task = ("properties", "handling_storage", "detection", "uses")[i % 4]
            prompt = t.fill(t.TASK_PROMPTS[task][i % 3], compound=name, task=task)
            chosen = f"{name.capitalize()}: " + " ".join(facts[j % 5] for j in range(i, i + 2 + i % 5))
            rejected = t.fill(t.OVER_REFUSALS[i % 4], compound=name, task=task)
        rows.append({"pair_id": f"b{i}", "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pl.DataFrame(rows)


def truncation_report(pairs: pl.DataFrame, tokenizer: Any, max_prompt: int, max_length: int) -> list[str]:
    """How many pairs each (max_prompt_length, max_length) truncates, from the untruncated lengths."""
    full = encode_pairs(pairs, tokenizer, 10_000, 20_000)
    lens = [(len(p), len(c), len(r)) for p, c, r in full.select("prompt_ids", "chosen_ids", "rejected_ids").iter_rows()]
    longest = max(p + max(c, r) for p, c, r in lens)
    lines = [f"untruncated pairs: longest prompt+answer {longest} tokens, mean prompt {statistics.mean(p for p, _, _ in lens):.0f}, "
             f"mean chosen {statistics.mean(c for _, c, _ in lens):.0f}, mean rejected {statistics.mean(r for _, _, r in lens):.0f}"]  # fmt: skip
    for ml in sorted({96, 128, 160, 192, max_length, 256}):
        mp = min(max_prompt, ml - 8)
        hit, lost = 0, 0
        for p, c, r in lens:
            kept_p = min(p, mp)
            room = ml - kept_p
            loss = (p - kept_p) + max(0, c - room) + max(0, r - room)
            hit += loss > 0
            lost += loss
        mark = "  <- dpo.max_length" if ml == max_length else ""
        lines.append(f"  max_length {ml:3d} / max_prompt_length {mp:3d}: {hit:3d} of {len(lens)} pairs truncated, {lost} tokens lost{mark}")
    return lines


def run_round(trainer: Any, timer: StepTimer, steps: int) -> tuple[list[float], list[float]]:
    """`steps` optimizer steps from a fresh loop; returns (seconds, tokens) of steps 2.."""
    n_times, n_tokens = len(timer.times), len(timer.tokens)
    trainer.args.max_steps = steps
    trainer.optimizer, trainer.lr_scheduler = None, None
    trainer.train()
    return timer.times[n_times + 1 :], timer.tokens[n_tokens + 1 :]


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::matmul", "aten::linear")  # fmt: skip


def profile_steps(trainer: Any, timer: StepTimer, steps: int) -> list[str]:
    """Where `steps` libra steps spend their CPU time, by op (self time), matmuls apart from the rest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        secs, _ = run_round(trainer, timer, steps + 1)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    lines = [f"profile of {steps} libra steps ({statistics.mean(secs):.2f} s/step under the profiler, first of {steps + 1} "
             f"not timed): self CPU time {total / 1e6:.2f} s, matmul and attention kernels {matmul / total:.0%}, the rest "
             f"{1 - matmul / total:.0%}; top ops by self CPU time:"]  # fmt: skip
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]:
        lines.append(f"  {e.key[:60]:60s} {e.self_cpu_time_total / 1e6:7.3f} s {e.self_cpu_time_total / total:5.1%}  {e.count:7d} calls")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/base", help="base checkpoint dir (default: %(default)s)")
    parser.add_argument("--train", default="data/train.parquet", help="training pairs; templates if absent (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per round, first is warm-up (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per path (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=0, help="use only the first N pairs (0: all; default: %(default)s)")
    parser.add_argument("--paths", default="trl,libra-unpacked,libra", help="paths to time (default: %(default)s)")
    parser.add_argument("--first-layer", type=int, default=None, metavar="K",
                        help="also time libra with dpo.lora.first_layer=K (0: LoRA on every layer), as path libra-first<K>; "
                        "path libra uses params.yaml's value (default: off)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timed rounds, profile N more libra steps and print where their CPU time goes (default: off)")  # fmt: skip
    args = parser.parse_args()

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    all_params = load_params()
    params = all_params.dpo
    threads = set_threads(params.num_threads)
    seed_everything(params.seed)
    pairs = read_parquet(args.train) if Path(args.train).exists() else template_pairs()
    source = args.train if Path(args.train).exists() else "libra templates (no --train data)"
    all_pairs = pairs
    if args.pairs:
        pairs = pairs.head(args.pairs)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    out = Path(tempfile.mkdtemp(prefix="dpo_bench_"))
    on_cpu = not torch.cuda.is_available()

    # Matmul rates on the model's MLP GEMM shape (512 tokens x hidden x intermediate); bf16 is
    # timed for at least one call only (emulated bf16 runs at about 1 GFLOP/s on AVX2).
    cfg = AutoModelForCausalLM.from_pretrained(args.model).config
    shape = (512, cfg.hidden_size, cfg.intermediate_size)
    rate = {"float32": matmul_gflops(torch.float32, *shape, seconds=1.0), "bfloat16": matmul_gflops(torch.bfloat16, *shape, seconds=0.5)}
    precision = choose_precision(all_params.compute.precision)
    chosen_rate = rate["bfloat16"] if precision.precision == "bf16" else rate["float32"]

    # libra: encode once, reference pass once (timed apart)
    encoded = encode_pairs(pairs, tokenizer, params.max_prompt_length, params.max_length)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=precision.dtype)
    n_params = sum(p.numel() for p in base.parameters())  # before a tied LM head gets its own bf16 copy
    if precision.autocast_bf16:
        bf16_matmul_weights(base.requires_grad_(False))  # as the ref_logps stage does
    start = time.perf_counter()
    ref = reference_pass(base, encoded, tokenizer.pad_token_id, autocast_bf16=precision.autocast_bf16)[0]
    ref_seconds = time.perf_counter() - start
    prefix = shared_prefix_length(encoded["prompt_ids"].to_list())
    ref_unshared: tuple[float, float] | None = None  # seconds, largest |log-prob difference|
    if "libra-noprefix" in args.paths.split(","):
        start = time.perf_counter()
        unshared = reference_pass(base, encoded, tokenizer.pad_token_id, autocast_bf16=precision.autocast_bf16, share_prefix=False)[0]
        diff = max((ref[c] - unshared[c]).abs().max() for c in ("ref_chosen_logps", "ref_rejected_logps"))
        ref_unshared = (time.perf_counter() - start, float(diff))
    lens = [(len(p), len(c), len(r)) for p, c, r in encoded.select("prompt_ids", "chosen_ids", "rejected_ids").iter_rows()]
    unpacked_tokens = sum(2 * p + c + r for p, c, r in lens)
    packed_tokens = sum(p + c + r for p, c, r in lens)
    del base

    trainers: dict[str, tuple[Any, StepTimer]] = {}
    paths = args.paths.split(",")
    variants = {name: params for name in ("libra-unpacked", "libra", "libra-eager", "libra-noprefix") if name in paths}
    if args.first_layer is not None:
        first = f"libra-first{args.first_layer}"
        variants[first] = params.model_copy(update={"lora": params.lora.model_copy(update={"first_layer": args.first_layer})})
        paths.append(first)
    if "trl" in paths:
        trl_pairs = Dataset.from_list([
            {"prompt": conversation(r["prompt"]), "chosen": conversation(r["prompt"], r["chosen"])[1:],
             "rejected": conversation(r["prompt"], r["rejected"])[1:]}
            for r in pairs.iter_rows(named=True)
        ])
        timer = StepTimer()
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
        trainers["trl"] = (DPOTrainer(
            model=model,
            args=DPOConfig(
                output_dir=str(out / "trl"), per_device_train_batch_size=params.batch_size, learning_rate=params.learning_rate,
                beta=params.beta, loss_type=list(params.loss_type), max_length=params.max_length, logging_steps=1,
                save_strategy="no", report_to="none", seed=params.seed, disable_tqdm=True, use_cpu=on_cpu,
            ),
            train_dataset=trl_pairs, processing_class=tokenizer, peft_config=lora_config(params, model), callbacks=[timer],
        ), timer)  # fmt: skip
    for name, variant in variants.items():
        timer = StepTimer()
        config = dpo_config(params, out / name, world=1, precision=precision)
        config.save_strategy, config.disable_tqdm = "no", True
        collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id) if name == "libra-unpacked" else None
        attention = "eager" if name == "libra-eager" else "sdpa"
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=precision.dtype, attn_implementation=attention)
        trainers[name] = (LibraDPOTrainer(
            model=model,
            ref_model=None, args=config,
            train_dataset=training_dataset(encoded, ref, "bench"), processing_class=tokenizer, data_collator=collator,
            peft_config=lora_config(variant, model), callbacks=[timer], cpu_bf16=precision.autocast_bf16,
            first_layer=variant.lora.first_layer, share_prefix=name != "libra-noprefix",
        ), timer)  # fmt: skip

    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in trainers}
    for _ in range(args.rounds):
        for name, (trainer, timer) in trainers.items():
            secs, toks = run_round(trainer, timer, args.steps)
            results[name][0].extend(secs)
            results[name][1].extend(toks)

    # Measured again after the steps: on a shared machine the rate moves with the load, and
    # the floor uses the mean of the two measurements.
    rate_end = {"float32": matmul_gflops(torch.float32, *shape, seconds=1.0), "bfloat16": matmul_gflops(torch.bfloat16, *shape, seconds=0.5)}
    rate_start = dict(rate)
    rate = {k: (rate_start[k] + rate_end[k]) / 2 for k in rate}
    chosen_rate = rate["bfloat16"] if precision.precision == "bf16" else rate["float32"]
    load = os.getloadavg()
    print(f"machine: torch CPU capability {torch.backends.cpu.get_cpu_capability()}, cuda {torch.cuda.is_available()}, "
          f"{threads} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    print(f"model {args.model}: {n_params / 1e6:.1f}M params; {len(pairs)} pairs (of {len(all_pairs)}) from {source}; batch {params.batch_size}; "
          f"max_length {params.max_length}, max_prompt_length {params.max_prompt_length}; loss {list(params.loss_type)}")  # fmt: skip
    print(f"matmul {shape[0]}x{shape[1]}x{shape[2]}: fp32 {rate['float32']:.1f} GFLOP/s, bf16 {rate['bfloat16']:.1f} GFLOP/s "
          f"(mean of before the steps: fp32 {rate_start['float32']:.1f}, bf16 {rate_start['bfloat16']:.1f}; "
          f"after: fp32 {rate_end['float32']:.1f}, bf16 {rate_end['bfloat16']:.1f})")  # fmt: skip
    print(f"precision: {precision.precision} (requested {precision.requested}; {precision.reason})")
    # The floor of one step: with the reference precomputed and the base frozen, each token
    # costs a forward (2 FLOPs per parameter: one multiply-add) and a backward that needs the
    # gradient with respect to the activations (another 2 per parameter) but not the base
    # weights' gradients (those 2 more, which full fine-tuning pays, are skipped); LoRA's own
    # r=8 matmuls and attention's seq^2 terms are under 2 % here. So 4 x params x tokens, at the
    # matmul rate of the precision in use. Tokens are TRL's count (chosen and rejected
    # [prompt; answer] rows): a path that computes the shared prompt once (libra) may beat it.
    step_secs: dict[str, float] = {}
    for name, (secs, toks) in results.items():
        if not secs:
            continue
        step_secs[name] = statistics.mean(secs)
        tps = sum(toks) / sum(secs)
        print(f"{name:15s} {step_secs[name]:6.2f} s/step (median {statistics.median(secs):.2f}, {len(secs)} steps, "
              f"{[round(s, 2) for s in secs]}), {statistics.mean(toks):.0f} tokens/step, {tps:.0f} tokens/s")  # fmt: skip
    if "libra" in results and results["libra"][1]:
        tokens_per_step = statistics.mean(results["libra"][1])
        floor = 4 * n_params * tokens_per_step / (chosen_rate * 1e9)
        print(f"FLOP floor: {floor:.2f} s/step (4 x {n_params / 1e6:.1f}M params x {tokens_per_step:.0f} tokens at "
              f"{chosen_rate:.1f} GFLOP/s, {precision.precision}); libra at {step_secs['libra'] / floor:.2f}x the floor"
              + "".join(f", {n} at {step_secs[n] / floor:.2f}x" for n in step_secs if n != "libra"))  # fmt: skip
        if any(v.lora.first_layer for v in variants.values()):
            print("(the floor is the all-layer step's; a path with first_layer K > 0 runs only the layers from K up in "
                  "each step, so it can go under 1x)")  # fmt: skip
        for other in step_secs:
            if other != "libra":
                # same pairs and batch size, so per-step time is the fair comparison (random vs bucketed
                # batches make tokens/step differ a little between paths)
                print(f"speed-up libra / {other}: {step_secs[other] / step_secs['libra']:.2f}x per step")
    ref_floor = 2 * n_params * unpacked_tokens / (chosen_rate * 1e9)
    print(f"reference pass (once per dataset): {ref_seconds:.1f} s for {len(pairs)} pairs, {unpacked_tokens} tokens "
          f"({packed_tokens} in packed rows, the prompt once per pair; {prefix} of each prompt's tokens shared by every "
          f"pair, computed once per batch); floor 2 x params x tokens = {ref_floor:.1f} s: "
          f"{ref_seconds / ref_floor:.2f}x the floor")  # fmt: skip
    if ref_unshared is not None:
        print(f"reference pass with the shared prefix in every row: {ref_unshared[0]:.1f} s "
              f"({ref_unshared[0] / ref_seconds:.2f}x the shared pass's time); largest log-prob difference {ref_unshared[1]:.2e}")  # fmt: skip
    for name, (trainer, _) in trainers.items():
        frozen = getattr(trainer.data_collator, "frozen", None)
        if frozen is not None:
            print(f"{name}: layers below {frozen.first_layer} run once over {len(frozen.offsets) - 1} pairs before the steps: "
                  f"{frozen.seconds:.1f} s, {frozen.nbytes / 2**20:.0f} MiB kept")  # fmt: skip
    for line in truncation_report(all_pairs, tokenizer, params.max_prompt_length, params.max_length):
        print(line)
    if args.profile and "libra" in trainers:
        for line in profile_steps(*trainers["libra"], steps=args.profile):
            print(line)


if __name__ == "__main__":
    main()
