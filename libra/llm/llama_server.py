"""`python -m libra.llm.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server ARGS`), with llama.cpp's extra weight buffers turned off on
CPUs with AMX.

Why: on a CPU with AMX (Sapphire Rapids and later Xeons), llama.cpp repacks the quantised
weights into an AMX buffer, and the AMX matmul then crashes the server with SIGSEGV in
`ggml_backend_amx_mul_mat` at the first completion (ggml-org/llama.cpp#20824; seen here on
a 2-core Xeon with `amx_int8`, llama-cpp-python 0.3.36, every completion). Loading the
model with `use_extra_bufts = False` (llama.cpp's `--no-repack`) keeps the weights in plain
CPU buffers, served by the AVX-512/AVX2 kernels. Other CPUs keep llama.cpp's default, so
their sampled text (and the committed data made on them) does not change.

$LIBRA_LLAMA_EXTRA_BUFTS=1 or 0 overrides the choice either way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

EXTRA_BUFTS_ENV = "LIBRA_LLAMA_EXTRA_BUFTS"
AMX_FLAGS = ("amx_int8", "amx_tile", "amx_bf16")


def use_extra_buffers(cpu_flags: frozenset[str], env: Mapping[str, str]) -> tuple[bool, str]:
    """Whether llama.cpp may repack weights into extra (AMX, repack) buffers, and why."""
    forced = env.get(EXTRA_BUFTS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{EXTRA_BUFTS_ENV}={forced}"
    if forced:
        raise ValueError(f"{EXTRA_BUFTS_ENV}={forced!r}: set it to 1 (llama.cpp's default buffers) or 0 (plain CPU buffers), or unset it")
    amx = sorted(f for f in AMX_FLAGS if f in cpu_flags)
    if amx:
        return False, f"CPU has {'/'.join(amx)}: llama.cpp's AMX buffers crash (ggml-org/llama.cpp#20824)"
    return True, "llama.cpp default"


def main() -> None:
    import llama_cpp.llama_cpp as llama_lib  # the module llama_cpp.llama reads its defaults from
    from llama_cpp.server.__main__ import main as server_main

    from libra.train.precision import read_cpu_flags

    extra, why = use_extra_buffers(read_cpu_flags(), os.environ)
    if not extra:
        default_params = llama_lib.llama_model_default_params

        def plain_cpu_buffers():  # type: ignore[no-untyped-def]
            params = default_params()
            params.use_extra_bufts = False
            return params

        # Llama() builds its model params with this function; llama-cpp-python has no argument for the field.
        llama_lib.llama_model_default_params = plain_cpu_buffers
        print(f"libra: llama.cpp extra weight buffers off ({why})", flush=True)
    server_main()


if __name__ == "__main__":
    main()
