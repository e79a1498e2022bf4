"""python bench/llm_throughput.py [--seeds data/seeds.parquet] [--limit 48] [--configs shipped:1:2 q8_0:1:2 q8_0:2:1]

Where the data stages' time goes on the embedded llama.cpp server, and what
`llm.local.weights`, `llm.local.servers` and `llm.local.n_threads` do to it, side by side
in one run on this machine. Each config is WEIGHTS:SERVERS:THREADS (threads per server;
weights from libra/llm/weights.py); the default compares the previous default (the
shipped Q4_1 file, one 2-thread server), its Q8_0 copy on the same server, and the Q8_0
copy on two 1-thread servers. For each:
  1. llama.cpp in this process, one stream at THREADS threads: prompt reading (tokens/s,
     best of 3 over a 300-token prompt) and writing (tokens/s over 100 greedy tokens): the
     floor one server that serves one request at a time can reach;
  2. the triplets and rephrase stages' own LLM work (libra.data.triplets.build_triplets,
     libra.data.rephrase.build_pairs on those triplets) through the real client and a
     fresh server, with an empty call cache: wall seconds, calls, prompt and completion
     tokens, completion tokens/s, and how many rows each kept and quarantined;
  3. next-token KL from the shipped weights and top-1 agreement, on the first 1,500
     tokens of the triplets' chosen answers: how far the copy is from the shipped model.
The call cache is a temporary file, so nothing is read from or written to the project's.
Input: data/seeds.parquet (`dvc repro seeds`, no LLM call).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libra.config import load_params  # noqa: E402
from libra.data.rephrase import build_pairs  # noqa: E402
from libra.data.triplets import build_triplets  # noqa: E402
from libra.llm.client import open_client  # noqa: E402
from libra.llm.local import smollm2_gguf  # noqa: E402
from libra.llm.weights import WEIGHT_CHOICES, served_gguf  # noqa: E402
from libra.llm.weights_kl import divergence  # noqa: E402
from libra.train.precision import read_cpu_flags  # noqa: E402


def one_stream_rates(path: Path, n_threads: int) -> tuple[float, float]:
    import llama_cpp

    from libra.llm.llama_server import choose_weight_buffers

    choose_weight_buffers()  # as the embedded server does: llama.cpp's AMX buffers crash on AMX CPUs
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=n_threads, verbose=False)
    prompt = llm.tokenize(("The solvent was removed and the residue dried. " * 40).encode())[:300]
    best = float("inf")
    for _ in range(3):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        best = min(best, time.perf_counter() - start)
    start, written = time.perf_counter(), 0
    for _ in llm.generate(llm.tokenize(b"Tell me about the uses of ethanol."), temp=0.0, reset=True):
        written += 1
        if written >= 100:
            break
    write_rate = written / (time.perf_counter() - start)
    del llm
    return len(prompt) / best, write_rate


def stage_run(params: Any, local: Any, seeds: pl.DataFrame, cache: Path) -> dict[str, Any]:
    llm = params.llm.model_copy(update={"cache_path": str(cache), "local": local})
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with open_client(llm, params.llm.generator, stage="triplets", usage_path=Path(tmp) / "t.json") as client:
            triplets, t_quarantine = build_triplets(seeds, client, params.triplets)
        out["triplets"] = {"wall_s": time.perf_counter() - start, **json.loads((Path(tmp) / "t.json").read_text())}
        out["triplets"]["kept"], out["triplets"]["quarantined"] = triplets.height, t_quarantine.height
        start = time.perf_counter()
        with open_client(llm, params.llm.generator, stage="rephrase", usage_path=Path(tmp) / "r.json") as client:
            pairs, r_quarantine, _ = build_pairs(triplets, client, params.rephrase)
        out["rephrase"] = {"wall_s": time.perf_counter() - start, **json.loads((Path(tmp) / "r.json").read_text())}
        out["rephrase"]["kept"], out["rephrase"]["quarantined"] = pairs.height, r_quarantine.height
    out["chosen_text"] = " ".join(triplets["chosen"].to_list())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="data/seeds.parquet", help="seeds table (default data/seeds.parquet)")
    parser.add_argument("--limit", type=int, default=0, help="first N seeds only (default 0: all)")
    parser.add_argument("--configs", nargs="+", default=["shipped:1:2", "q8_0:1:2", "q8_0:2:1"], help="WEIGHTS:SERVERS:THREADS to compare")
    args = parser.parse_args()
    configs: list[tuple[str, int, int]] = []
    for text in args.configs:
        weights, servers, threads = (text.split(":") + ["", ""])[:3]
        if weights not in WEIGHT_CHOICES or not servers.isdigit() or not threads.isdigit():
            sys.exit(f"--configs {text!r}: write WEIGHTS:SERVERS:THREADS, WEIGHTS one of {', '.join(WEIGHT_CHOICES)}, e.g. q8_0:2:1")
        configs.append((weights, int(servers), int(threads)))
    if not Path(args.seeds).is_file():
        sys.exit(f"{args.seeds} is missing: run `dvc repro seeds` first (no LLM call), or pass --seeds")

    params = load_params()
    seeds = pl.read_parquet(args.seeds)
    if args.limit:
        seeds = seeds.head(args.limit)
    flags = read_cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    print(f"machine: {os.cpu_count()} CPUs, flags {' '.join(simd) or '(none of avx2/avx512/amx)'}")
    print(f"data: {seeds.height} seeds from {args.seeds}")

    source = smollm2_gguf()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for weights, servers, threads in configs:
            name = f"{weights} x{servers} server(s) x{threads} thread(s)"
            path = served_gguf(source, weights)
            read_rate, write_rate = one_stream_rates(path, threads)
            local = params.llm.local.model_copy(update={"weights": weights, "servers": servers, "n_threads": threads})
            run = stage_run(params, local, seeds, Path(tmp) / f"{weights}-{servers}-{threads}.sqlite")
            results[name] = {"path": path, "read": read_rate, "write": write_rate, **run}
            print(f"\n{name} ({path.name}, {path.stat().st_size / 2**20:.0f} MiB): one stream reads {read_rate:.0f} prompt tokens/s, writes {write_rate:.0f} tokens/s")
            for stage in ("triplets", "rephrase"):
                s = run[stage]
                rate = s["completion_tokens"] / s["wall_s"]
                print(f"  {stage}: {s['wall_s']:.1f} s, {s['calls']} calls, {s['prompt_tokens']} prompt + {s['completion_tokens']} completion tokens "
                      f"({rate:.1f} completion tokens/s); kept {s['kept']}, quarantined {s['quarantined']}")  # fmt: skip

    if len(results) > 1:
        first, *others = list(results)
        print(f"\nside by side (against {first}):")
        for other in others:
            for stage in ("triplets", "rephrase"):
                a, b = results[first][stage]["wall_s"], results[other][stage]["wall_s"]
                print(f"  {stage}: {other} {b:.1f} s against {a:.1f} s: {a / b:.2f}x")
            a_tot = sum(results[first][s]["wall_s"] for s in ("triplets", "rephrase"))
            b_tot = sum(results[other][s]["wall_s"] for s in ("triplets", "rephrase"))
            print(f"  both stages: {b_tot:.1f} s against {a_tot:.1f} s: {a_tot / b_tot:.2f}x; one-stream read "
                  f"{results[other]['read'] / results[first]['read']:.2f}x, write {results[other]['write'] / results[first]['write']:.2f}x")  # fmt: skip
        ref_text = results[first]["chosen_text"]
        compared = {results[first]["path"]}
        for other in others:
            if results[other]["path"] in compared:
                continue
            compared.add(results[other]["path"])
            d = divergence(results[first]["path"], results[other]["path"], ref_text, os.cpu_count() or 1)
            print(f"  next-token KL({first} || {other}) {d.kl:.4f} nats, top-1 agreement {d.top1_agreement:.3f}, over {d.tokens} tokens of {first}'s chosen answers")


if __name__ == "__main__":
    main()
