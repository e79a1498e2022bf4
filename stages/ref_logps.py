"""Reference log-probs of every training pair under the base model.

    python stages/ref_logps.py --model models/base --train data/train.parquet --out data/ref_logps.parquet \
        [--frozen-states data/frozen_states.safetensors] [--stats metrics/ref_logps.json]

Reads params `dpo.max_prompt_length`, `dpo.max_length`, `dpo.lora.first_layer` and
`compute.precision` only, so a sweep over beta, learning rate or LoRA rank reuses this
output. Runs on one GPU if
present, else on all CPU cores (thread count does not change the result), in the
precision `libra.train.precision` chooses (fp32 on CPUs without native bf16). Pairs are
tokenised by the same function the dpo stage uses (chat template on the prompt, TRL's
prompt/completion split, libra's truncation) and run through the forward the dpo step
uses (one packed row per pair, the prefix every prompt shares run once per batch,
completion-only LM head). Writes pair_id,
ref_chosen_logps, ref_rejected_logps (summed over completion tokens). With
--frozen-states it also writes the hidden states entering decoder layer
`dpo.lora.first_layer`, kept from the same forward (an empty file when it is 0), so the dpo
stage does not run the frozen layers again. With --stats a small JSON: pairs, tokens,
seconds, tokens/s, the shared prefix's tokens, threads, the states' size and the precision with its reason.
"""

from __future__ import annotations

import argparse
import time

from libra.config import load_params
from libra.io import read_parquet, write_json, write_parquet
from libra.stage import entrypoint
from libra.train.encode import check_pairs, encode_pairs, packed_lengths, shared_prefix_length
from libra.train.precision import bf16_matmul_weights, choose_precision
from libra.train.frozen_layers import FrozenLayerStates
from libra.train.ref_logps import reference_pass
from libra.train.runtime import load_base, set_threads


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base checkpoint dir (base_model stage output)")
    parser.add_argument("--train", required=True, help="training pairs parquet (split stage output)")
    parser.add_argument("--out", required=True, help="parquet to write: pair_id, ref_chosen_logps, ref_rejected_logps")
    parser.add_argument("--frozen-states", help="safetensors to write: hidden states entering decoder layer dpo.lora.first_layer")
    parser.add_argument("--stats", help="optional JSON to write: pairs, tokens, seconds, precision")
    args = parser.parse_args()

    all_params = load_params()
    params = all_params.dpo
    threads = set_threads(0)  # all cores: thread count never changes the result, so it is no param here
    precision = choose_precision(all_params.compute.precision)
    print(f"ref_logps: precision {precision.precision} ({precision.reason})", flush=True)

    # Load
    train = read_parquet(args.train)
    check_pairs(train, args.train)
    model, tokenizer = load_base(args.model, dtype=precision.dtype)
    if precision.device == "cuda":
        model = model.to("cuda")
    if precision.autocast_bf16:
        bf16_matmul_weights(model.requires_grad_(False))

    # Compute
    start = time.perf_counter()
    encoded = encode_pairs(train, tokenizer, params.max_prompt_length, params.max_length)
    capture = params.lora.first_layer if args.frozen_states else 0
    ref, states = reference_pass(model, encoded, tokenizer.pad_token_id, autocast_bf16=precision.autocast_bf16,
                                 capture_layer=capture)  # fmt: skip
    seconds = time.perf_counter() - start

    # Save
    write_parquet(ref, args.out)
    states_mib = 0.0
    if args.frozen_states:
        states = states or FrozenLayerStates.from_rows(0, [], 0.0)  # first_layer 0: an empty file, for DVC
        states.save(args.frozen_states, encoded["pair_id"].to_list(), precision.states_key)
        states_mib = round(states.nbytes / 2**20, 1)
    tokens = sum(packed_lengths(encoded))
    prefix = shared_prefix_length(encoded["prompt_ids"].to_list())
    if args.stats:
        write_json({
            "pairs": ref.height, "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "shared_prefix_tokens": prefix,
            "threads": threads, "frozen_states_first_layer": capture, "frozen_states_mib": states_mib,
            "precision": precision.record(),
        }, args.stats)  # fmt: skip
    print(f"ref_logps: {ref.height} pairs, {tokens} tokens (prompt once per pair; the {prefix} tokens every prompt starts "
          f"with once per batch), {threads} threads, {seconds:.1f}s")  # fmt: skip
    if capture:
        print(f"ref_logps: kept the hidden states entering decoder layer {capture} ({states_mib} MiB) for the dpo stage")


if __name__ == "__main__":
    main()
