"""Process-level setup shared by the training stages: threads, ranks, model loading."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

from libra.errors import InputError


def usable_cores() -> int:
    """Physical cores this process may run on: matmul threads beyond them only contend."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or 1
    except ImportError:
        physical = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, allowed))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def set_threads(num_threads: int) -> int:
    """Set torch's intra-op threads: `num_threads`, or (0) the cores split evenly among local ranks."""
    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n = num_threads or max(1, usable_cores() // local)
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(model_dir: str | os.PathLike[str]) -> Any:
    """The checkpoint's tokenizer (it must carry a chat template), with a pad token set."""
    from transformers import AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise InputError(f"{path} is not a transformers checkpoint (no config.json); run `dvc repro base_model`")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise InputError(f"{path}: the tokenizer has no chat template; rebuild it with `dvc repro base_model`")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(model_dir: str | os.PathLike[str], dtype: str = "float32") -> tuple[Any, Any]:
    """The base checkpoint (in `dtype`: a `Precision.dtype`) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_dir)
    return AutoModelForCausalLM.from_pretrained(Path(model_dir), dtype=dtype), tokenizer


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process with `torchrun --standalone --nproc_per_node nproc <argv>` (does not return).

    torchrun, not `accelerate launch --cpu`, because on CPU the latter ran one process
    here; torchrun's env (RANK, WORLD_SIZE, ...) gives accelerate a gloo group on CPU and
    NCCL on GPUs.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
    print(f"dpo: relaunching under torchrun with {nproc} processes", flush=True)
    os.execv(sys.executable, cmd)
