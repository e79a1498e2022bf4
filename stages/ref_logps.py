"""Reference log-probs of every training pair under the base model.

    python stages/ref_logps.py --model models/base --train data/train.parquet --out data/ref_logps.parquet

Reads params `dpo.max_prompt_length` and `dpo.max_length` only, so a sweep over beta,
learning rate or LoRA settings reuses this output. Runs on one GPU if present, else on
all CPU cores (thread count does not change the result). Pairs are tokenised by the same
function the dpo stage uses (chat template on the prompt, TRL's prompt/completion split,
libra's truncation). Writes pair_id, ref_chosen_logps, ref_rejected_logps (summed over
completion tokens, fp32).
"""

from __future__ import annotations

import argparse
import time

import torch

from libra.config import load_params
from libra.io import read_parquet, write_parquet
from libra.stage import entrypoint
from libra.train.encode import check_pairs, encode_pairs
from libra.train.ref_logps import reference_logps
from libra.train.runtime import load_base, set_threads


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base checkpoint dir (base_model stage output)")
    parser.add_argument("--train", required=True, help="training pairs parquet (split stage output)")
    parser.add_argument("--out", required=True, help="parquet to write: pair_id, ref_chosen_logps, ref_rejected_logps")
    args = parser.parse_args()

    params = load_params().dpo
    threads = set_threads(0)  # all cores: thread count never changes the result, so it is no param here

    # Load
    train = read_parquet(args.train)
    check_pairs(train, args.train)
    model, tokenizer = load_base(args.model)
    if torch.cuda.is_available():
        model = model.to("cuda")

    # Compute
    start = time.perf_counter()
    encoded = encode_pairs(train, tokenizer, params.max_prompt_length, params.max_length)
    ref = reference_logps(model, encoded, tokenizer.pad_token_id)

    # Save
    write_parquet(ref, args.out)
    tokens = int(encoded["length"].sum())
    print(f"ref_logps: {ref.height} pairs, {threads} threads, {time.perf_counter() - start:.1f}s (~{tokens} tokens/side)")


if __name__ == "__main__":
    main()
