"""Benchmark the LLM client: concurrency speed-up and warm-cache rerun time.

    python bench/llm_client.py [--calls 1000] [--latency 0.2]

Against a loopback endpoint (libra's fault proxy answering canned replies) with an
injected per-request latency, it measures in one run:
  1. sequential (concurrency 1) vs concurrency 16 throughput, on disjoint prompts;
  2. a warm-cache rerun of --calls calls: wall time and requests sent (target <= 2 s, 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from libra.config import LLMParams, LLMRole
from libra.llm.client import ChatRequest, open_client


def batch(prefix: str, n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} question {i}"}]) for i in range(n)]


def timed_run(llm: LLMParams, role: LLMRole, requests: list[ChatRequest], usage: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    with open_client(llm, role, stage="bench", usage_path=usage) as client:
        client.run(requests, desc="bench")
    return time.perf_counter() - start, json.loads(usage.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="calls in the warm-cache rerun (default 1000)")
    parser.add_argument("--throughput-calls", type=int, default=256, help="calls per throughput run (default 256)")
    parser.add_argument("--latency", type=float, default=0.2, help="injected latency per request in seconds (default 0.2)")
    args = parser.parse_args()

    os.environ.setdefault("LIBRA_BENCH_KEY", "bench-key")
    # The endpoint runs in its own process so that it does not share the client's GIL.
    proxy = subprocess.Popen(
        [sys.executable, "-m", "libra.llm.faultproxy", "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True
    )
    assert proxy.stdout is not None
    base_url = proxy.stdout.readline().strip()
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        llm = LLMParams(cache_path=str(tmpd / "llm.sqlite"))
        role = LLMRole(base_url=base_url, model="bench", api_key_env="LIBRA_BENCH_KEY", max_tokens=16)
        n = args.throughput_calls
        t_seq, _ = timed_run(llm, role.model_copy(update={"concurrency": 1}), batch("seq", n), tmpd / "u.json")
        t_par, _ = timed_run(llm, role.model_copy(update={"concurrency": 16}), batch("par", n), tmpd / "u.json")
        print(f"throughput, {n} calls, {args.latency * 1000:.0f} ms latency: sequential {n / t_seq:.1f} calls/s, "
              f"concurrency 16 {n / t_par:.1f} calls/s, speed-up {t_seq / t_par:.1f}x (target >= 12x)")  # fmt: skip

        cold_role = role.model_copy(update={"concurrency": 64})
        t_cold, cold = timed_run(llm, cold_role, batch("warm", args.calls), tmpd / "u.json")
        t_warm, warm = timed_run(llm, cold_role, batch("warm", args.calls), tmpd / "u.json")
        print(f"cache, {args.calls} calls: cold {t_cold:.2f} s ({cold['requests']} requests), "
              f"warm rerun {t_warm:.2f} s ({warm['requests']} requests, {warm['cache_hits']} hits) (target <= 2 s, 0 requests)")  # fmt: skip
    proxy.terminate()


if __name__ == "__main__":
    main()
