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


def choose_weight_buffers() -> str | None:
    """Apply use_extra_buffers' choice to every llama_cpp.Llama this process builds from now on (the server's
    and in-process ones alike); returns why the extra buffers are off, or None when llama.cpp keeps its default."""
    import llama_cpp.llama_cpp as llama_lib  # the module llama_cpp.llama reads its defaults from

    from libra.train.precision import read_cpu_flags

    extra, why = use_extra_buffers(read_cpu_flags(), os.environ)
    if extra:
        return None
    default_params = llama_lib.llama_model_default_params
    if getattr(default_params, "libra_plain_cpu_buffers", False):
        return why

    def plain_cpu_buffers():  # type: ignore[no-untyped-def]
        params = default_params()
        params.use_extra_bufts = False
        return params

    plain_cpu_buffers.libra_plain_cpu_buffers = True  # type: ignore[attr-defined]
    # Llama() builds its model params with this function; llama-cpp-python has no argument for the field.
    llama_lib.llama_model_default_params = plain_cpu_buffers
    return why


def main() -> None:
    from llama_cpp.server.__main__ import main as server_main

    why = choose_weight_buffers()
    if why:
        print(f"libra: llama.cpp extra weight buffers off ({why})", flush=True)
    server_main()


if __name__ == "__main__":
    main()
