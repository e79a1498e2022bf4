"""Balanced seeds from the resolved catalog.

    python stages/seeds.py --compounds data/compounds.parquet --out data/seeds.parquet \
        --quarantine data/quarantine/seeds.parquet --stats metrics/data/seeds.json

Reads params `seeds.*`. Writes one row per (compound, task) seed with its policy label.
"""

from __future__ import annotations

import argparse

import polars as pl

from libra.config import load_params
from libra.data.seeds import sample_seeds
from libra.data.quarantine import quarantine_frame
from libra.io import read_parquet, write_json, write_parquet
from libra.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compounds", required=True, help="resolved catalog (catalog stage output)")
    parser.add_argument("--out", required=True, help="seeds parquet to write")
    parser.add_argument("--quarantine", required=True, help="quarantine parquet (seeds with an unusable SMILES in smiles mode)")
    parser.add_argument("--stats", required=True, help="stats json (counts per label, task, group)")
    args = parser.parse_args()

    params = load_params().seeds
    compounds = read_parquet(args.compounds)
    quarantine = quarantine_frame([])
    if params.mode == "smiles":
        missing = compounds.filter(pl.col("smiles").is_null() | (pl.col("smiles") == ""))
        quarantine = quarantine_frame(
            [
                {"stage": "seeds", "seed_id": r["compound_id"], "field": "smiles", "text": r["name"], "reason": "no SMILES for smiles mode"}
                for r in missing.iter_rows(named=True)
            ]
        )
        compounds = compounds.filter(pl.col("smiles").is_not_null() & (pl.col("smiles") != ""))
    seeds = sample_seeds(compounds, params)

    write_parquet(seeds, args.out)
    write_parquet(quarantine, args.quarantine)
    counts = lambda col: dict(sorted((str(k), v) for k, v in seeds.group_by(col).len().iter_rows()))  # noqa: E731
    write_json(
        {
            "seeds": seeds.height,
            "compounds_quarantined": quarantine.height,
            "by_label": counts("label"),
            "by_task": counts("task"),
            "by_group": counts("group"),
            "by_class": counts("class"),
        },
        args.stats,
    )
    print(f"seeds: {seeds.height} ({counts('label')})")


if __name__ == "__main__":
    main()
