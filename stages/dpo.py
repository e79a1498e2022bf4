r"""Train a LoRA adapter with DPO over the base model.

    python stages/dpo.py --model models/base --train data/train.parquet \
        --ref-logps data/ref_logps.parquet [--frozen-states data/frozen_states.safetensors] --out models/dpo \
        --checkpoints models/dpo_checkpoints --metrics metrics/train.json --plots dvclive

Reads params `dpo.*` (all but max_prompt_length/max_length are training knobs; those two
must match the ref_logps stage, which DVC guarantees). With dpo.num_processes > 1 the
script re-executes itself under `torchrun --standalone --nproc_per_node N` (gloo on CPU,
NCCL on GPUs); launched by torchrun or `accelerate launch` already, it uses that world.
A killed run resumes from the last checkpoint in --checkpoints when params and data are
unchanged. Only rank 0 writes --out (PEFT adapter + libra_train.json), --metrics and --plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from libra.config import load_params
from libra.io import read_parquet, write_json
from libra.stage import entrypoint
from libra.train.dpo import (
    per_device_batch, run_fingerprint, save_adapter, stored_frozen_states, train, training_dataset, write_curves,
)
from libra.train.encode import check_pairs, encode_pairs
from libra.train.precision import choose_precision
from libra.train.runtime import load_tokenizer, rank, relaunch_under_torchrun, seed_everything, set_threads, world_size


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base checkpoint dir (base_model stage output)")
    parser.add_argument("--train", required=True, help="training pairs parquet (split stage output)")
    parser.add_argument("--ref-logps", required=True, help="reference log-probs parquet (ref_logps stage output)")
    parser.add_argument("--frozen-states", help="ref_logps stage's hidden states entering dpo.lora.first_layer (safetensors); "
                        "used when made for these pairs, layer and precision, else the layers run here")
    parser.add_argument("--out", required=True, help="adapter dir to write (standard PEFT format)")
    parser.add_argument("--checkpoints", required=True, help="checkpoint dir, kept between runs to resume")
    parser.add_argument("--metrics", required=True, help="summary metrics json to write")
    parser.add_argument("--plots", required=True, help="DVCLive dir for per-step curves")
    args = parser.parse_args()

    all_params = load_params()
    params = all_params.dpo
    per_device_batch(params, params.num_processes)  # a bad split fails here, before any launch
    if params.num_processes > 1 and world_size() == 1:
        relaunch_under_torchrun(params.num_processes, [__file__, *sys.argv[1:]])
    threads = set_threads(params.num_threads)
    seed_everything(params.seed)
    precision = choose_precision(all_params.compute.precision)
    if rank() == 0:
        print(f"dpo: precision {precision.precision} ({precision.reason})", flush=True)

    # Load
    train_pairs = read_parquet(args.train)
    check_pairs(train_pairs, args.train)
    tokenizer = load_tokenizer(args.model)
    encoded = encode_pairs(train_pairs, tokenizer, params.max_prompt_length, params.max_length)
    dataset = training_dataset(encoded, read_parquet(args.ref_logps), args.ref_logps)
    fingerprint = run_fingerprint(params, world_size(), Path(args.model), [Path(args.train), Path(args.ref_logps)])
    frozen = stored_frozen_states(args.frozen_states, params.lora.first_layer, encoded, precision)

    # Train
    trainer, metrics = train(params, Path(args.model), dataset, Path(args.checkpoints), fingerprint, threads, precision, frozen)

    # Save
    if rank() == 0:
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_adapter(model, Path(args.out), params, {"base_model": args.model, "pairs": dataset.num_rows, "run": fingerprint})
        write_curves(trainer.state.log_history, Path(args.plots))
        write_json(metrics, args.metrics)
        print(
            f"dpo: {metrics['steps']} steps, loss {metrics['loss']:.4f}, reward acc {metrics['rewards_accuracies']:.2f}, "
            f"margin {metrics['rewards_margins']:.3f}, {metrics['s_per_step']} s/step, {metrics['tokens_per_s']} tokens/s "
            f"({metrics['processes']} proc x {threads} threads) -> {args.out}"
        )
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
