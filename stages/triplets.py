"""(prompt, chosen, rejected) triplets: generator answers for legitimate seeds, templates for the rest.

    python stages/triplets.py --seeds data/seeds.parquet --out data/triplets.parquet \
        --quarantine data/quarantine/triplets.parquet --stats metrics/data/triplets.json

Reads params `llm.generator`, `llm.local`, `triplets.*`. LLM calls are cached in
llm.cache_path; usage goes to metrics/usage/triplets.json.
"""

from __future__ import annotations

import argparse

from libra.config import load_params
from libra.data.triplets import build_triplets, reconcile
from libra.io import read_parquet, write_json, write_parquet
from libra.llm.client import open_client
from libra.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", required=True, help="seeds parquet (seeds stage output)")
    parser.add_argument("--out", required=True, help="triplets parquet to write")
    parser.add_argument("--quarantine", required=True, help="quarantined seeds with their reason")
    parser.add_argument("--stats", required=True, help="stats json; in = out + quarantined")
    parser.add_argument("--usage", default=None, help="LLM usage json to write (default: metrics/usage/triplets.json)")
    args = parser.parse_args()

    params = load_params()
    seeds = read_parquet(args.seeds)
    with open_client(params.llm, params.llm.generator, stage="triplets", usage_path=args.usage) as client:
        triplets, quarantine = build_triplets(seeds, client, params.triplets)

    write_parquet(triplets, args.out)
    write_parquet(quarantine, args.quarantine)
    stats = reconcile(seeds.height, triplets, quarantine)
    stats["chosen_source"] = dict(sorted(triplets.group_by("chosen_source").len().iter_rows())) if triplets.height else {}
    write_json(stats, args.stats)
    print(f"triplets: {triplets.height} kept, {quarantine.height} quarantined {stats['by_reason']}")


if __name__ == "__main__":
    main()
