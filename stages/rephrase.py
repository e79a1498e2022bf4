"""Augmentation: prompt and answer paraphrases, checked, deduplicated and crossed into pairs.

    python stages/rephrase.py --triplets data/triplets.parquet --out data/pairs.parquet \
        --quarantine data/quarantine/rephrase.parquet --stats metrics/data/rephrase.json

Reads params `llm.generator`, `llm.local`, `rephrase.*`. Usage: metrics/usage/rephrase.json.
"""

from __future__ import annotations

import argparse

from libra.config import load_params
from libra.data.rephrase import build_pairs
from libra.io import read_parquet, write_json, write_parquet
from libra.llm.client import open_client
from libra.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triplets", required=True, help="triplets parquet (triplets stage output)")
    parser.add_argument("--out", required=True, help="pairs parquet to write")
    parser.add_argument("--quarantine", required=True, help="quarantined paraphrases with their reason")
    parser.add_argument("--stats", required=True, help="stats json; in = out + quarantined (paraphrases)")
    parser.add_argument("--usage", default=None, help="LLM usage json to write (default: metrics/usage/rephrase.json)")
    args = parser.parse_args()

    params = load_params()
    triplets = read_parquet(args.triplets)
    with open_client(params.llm, params.llm.generator, stage="rephrase", usage_path=args.usage) as client:
        pairs, quarantine, stats = build_pairs(triplets, client, params.rephrase)
    write_parquet(pairs, args.out)
    write_parquet(quarantine, args.quarantine)
    write_json(stats, args.stats)
    print(f"rephrase: {stats['pairs']} pairs from {stats['triplets']} triplets; quarantined {stats['by_reason']}")


if __name__ == "__main__":
    main()
