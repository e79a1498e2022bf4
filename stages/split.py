"""Train/test split (by compound by default) and the data card.

    python stages/split.py --pairs data/pairs.parquet --train data/train.parquet \
        --test data/test.parquet --card data/README.md --stats metrics/data/split.json

Reads params `split.*` and `llm.generator.model` (named in the data card).
"""

from __future__ import annotations

import argparse

from libra.config import load_params
from libra.data.split import data_card, split_pairs, split_stats
from libra.io import read_parquet, write_json, write_parquet, write_text
from libra.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="pairs parquet (rephrase stage output)")
    parser.add_argument("--train", required=True, help="train parquet to write")
    parser.add_argument("--test", required=True, help="test parquet to write")
    parser.add_argument("--card", required=True, help="data card markdown to write")
    parser.add_argument("--stats", required=True, help="split stats json")
    args = parser.parse_args()

    params = load_params()
    pairs = read_parquet(args.pairs)
    train, test = split_pairs(pairs, params.split)
    stats = split_stats(train, test)
    write_parquet(train, args.train)
    write_parquet(test, args.test)
    write_json(stats, args.stats)
    write_text(data_card(stats, params.split, params.llm.generator.model), args.card)
    print(f"split ({params.split.strategy}): train {train.height} pairs, test {test.height} pairs, shared compounds {stats['shared_compounds']}")


if __name__ == "__main__":
    main()
