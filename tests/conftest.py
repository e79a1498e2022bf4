"""Shared fixtures: the real embedded llama.cpp server (started once), params, paths."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from libra.config import LocalServer, Params, parse_params
from libra.llm.local import LOCAL_URL_ENV, local_server

ROOT = Path(__file__).resolve().parents[1]
TINY_PROFILE = ROOT / "tests" / "profiles" / "tiny.yaml"


def tiny_raw() -> dict:
    return yaml.safe_load(TINY_PROFILE.read_text())


def tiny_params(tmp_path: Path, **overrides: dict) -> Params:
    """The tiny profile with its cache in tmp_path and section overrides merged in."""
    raw = tiny_raw()
    raw["llm"]["cache_path"] = str(tmp_path / "llm.sqlite")
    for section, values in overrides.items():
        _merge(raw.setdefault(section, {}), values)
    return parse_params(raw)


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this interpreter's bin dir first on PATH, so that
    `python`, `dvc` and `libra` inside dvc.yaml commands are the project's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def local_url() -> Iterator[str]:
    """One real llama.cpp server for the whole test session, shared through $LIBRA_LOCAL_URL."""
    previous = os.environ.get(LOCAL_URL_ENV)
    if previous:
        yield previous
        return
    with local_server("smollm2-135m-instruct", LocalServer(n_threads=os.cpu_count() or 1)) as url:
        os.environ[LOCAL_URL_ENV] = url
        try:
            yield url
        finally:
            os.environ.pop(LOCAL_URL_ENV, None)


def save_tiny_base(base: Path) -> Path:
    """A 2-layer Llama with the SmolLM2 tokenizer (from the shipped GGUF), saved at `base`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from libra.llm.local import smollm2_gguf

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with the SmolLM2 tokenizer."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny base (save_tiny_base) and a random LoRA adapter over it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    base, adapter = save_tiny_base(root / "base"), root / "dpo"
    # init_lora_weights=False gives a non-zero B, so the merged model really differs from base.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(adapter)
    return base, adapter
