r"""Resolve the curated catalog offline into the compounds table.

    python stages/catalog.py --catalog data/catalog/compounds.csv --out data/compounds.parquet \
        --quarantine data/quarantine/catalog.parquet --stats metrics/data/catalog.json

Reads param `catalog.max_unresolved_frac`. Names that chemicals/RDKit cannot resolve go to the
quarantine parquet with a reason (written even when empty); the stage fails when their share of
the catalog exceeds the threshold.
"""

from __future__ import annotations

import argparse
import time

from libra.config import load_params
from libra.data.catalog import catalog_stats, check_unresolved, read_catalog, resolve_catalog
from libra.io import write_json, write_parquet
from libra.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", required=True, help="curated CSV with columns name,class,regulation,group")
    parser.add_argument("--out", required=True, help="compounds parquet to write (resolved rows only)")
    parser.add_argument("--quarantine", required=True, help="parquet of unresolved rows with a `reason` column")
    parser.add_argument("--stats", required=True, help="stats json: in, out, quarantined, by_reason, by_class")
    args = parser.parse_args()

    # Load
    max_frac = load_params().catalog.max_unresolved_frac
    start = time.perf_counter()
    rows = read_catalog(args.catalog)

    # Resolve
    kept, quarantined = resolve_catalog(rows, args.catalog)
    stats = catalog_stats(kept, quarantined)

    # Save: the quarantine first, so a failed threshold check leaves the list of names to fix
    write_parquet(quarantined, args.quarantine)
    check_unresolved(stats["in"], stats["quarantined"], max_frac, args.quarantine)
    write_parquet(kept, args.out)
    write_json(stats, args.stats)
    per_class = ", ".join(f"{cls} {c['out']}/{c['in']}" for cls, c in stats["by_class"].items())
    print(
        f"catalog: {stats['out']} of {stats['in']} compounds resolved ({per_class}); "
        f"{stats['quarantined']} quarantined {stats['by_reason']} in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
