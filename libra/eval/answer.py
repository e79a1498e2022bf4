"""Answer the unique test prompts with a policy: a local checkpoint (+ LoRA adapter) or an endpoint.

    prompts = unique_prompts(read_parquet("data/test.parquet"))
    model, tok = load_policy("models/base", adapter="models/dpo")
    responses = generate(model, tok, prompts["prompt"].to_list(), batch_size=16, max_new_tokens=64)

Local generation is batched greedy decoding with left padding; prompts are sorted by
length so a batch holds prompts of similar length (little padding), then the answers
are put back in the input order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from libra.errors import InputError, LibraError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from libra.config import EndpointModel, EvalParams, LLMParams

# Columns carried from the test table into every answer row, in output order.
PROMPT_COLUMNS = ("prompt_id", "prompt", "label", "task", "group", "class", "compound", "compound_id")
LOCAL_MODELS = ("base", "dpo")
# Sampling, when eval.greedy is false, is seeded so a rerun gives the same answers.
SAMPLING_SEED = 0
SAMPLING_TEMPERATURE = 0.7


def prompt_id(prompt: str) -> str:
    """A stable id for a prompt: the same text always gets the same id, across runs and machines."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def unique_prompts(test: pl.DataFrame) -> pl.DataFrame:
    """One row per distinct prompt (the test table holds several pairs per prompt), sorted by prompt_id.

    A prompt that occurs with two different labels has no ground truth, so it is an input error.
    """
    missing = [c for c in PROMPT_COLUMNS if c != "prompt_id" and c not in test.columns]
    if missing:
        raise InputError(f"test table lacks column(s) {missing}; rebuild it with `dvc repro split`")
    rows = test.select([c for c in PROMPT_COLUMNS if c != "prompt_id"]).unique(maintain_order=True)
    rows = rows.with_columns(pl.col("prompt").map_elements(prompt_id, return_dtype=pl.String).alias("prompt_id"))
    conflicts = rows.group_by("prompt_id").agg(pl.col("label").n_unique().alias("n")).filter(pl.col("n") > 1)
    if conflicts.height:
        first = conflicts.sort("prompt_id")["prompt_id"][0]
        raise InputError(
            f"test prompt {first} (and {conflicts.height - 1} more) occurs with both labels; "
            "deduplicate prompts across seeds in the rephrase stage"
        )
    # Same prompt, same label, different metadata (e.g. two seeds of one compound): keep the first by
    # a total order so the choice does not depend on the input row order.
    rows = rows.sort(list(PROMPT_COLUMNS[1:])).unique(subset="prompt_id", keep="first")
    return rows.select(PROMPT_COLUMNS).sort("prompt_id")


def set_threads() -> int:
    """Use one torch thread per core the process may run on (2 on the reference machine)."""
    import torch

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def load_policy(base: str | Path, adapter: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base checkpoint, with the LoRA adapter merged into its weights when one is given.

    Merging removes the adapter's extra matmuls from every forward pass; the merged model
    computes the same function.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(base)
    if not (base / "config.json").exists():
        raise LibraError(f"{base} is not a transformers checkpoint (no config.json); run `dvc repro base_model`")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").exists():
            raise LibraError(f"{adapter} is not a PEFT adapter (no adapter_config.json); run `dvc repro dpo`")
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return model, tokenizer


def chat_texts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[str]:
    """Each prompt as a one-turn chat, templated once, ending where the assistant's turn begins."""
    return [
        str(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True))
        for p in prompts
    ]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    greedy: bool = True,
    progress: bool = True,
) -> list[str]:
    """Answers to `prompts`, in their order. Greedy decoding is deterministic for a given batch size."""
    import torch
    from tqdm.auto import tqdm

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder-only models continue from the last position, so padding goes on the left.
    tokenizer.padding_side = "left"
    texts = chat_texts(tokenizer, prompts)
    # The chat template already holds the special tokens; adding BOS again would change the input.
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    sampling: dict[str, Any] = (
        {"do_sample": False}
        if greedy
        else {"do_sample": True, "temperature": SAMPLING_TEMPERATURE}
    )
    if not greedy:
        torch.manual_seed(SAMPLING_SEED)
    answers: list[str] = [""] * len(texts)
    bar = tqdm(total=len(texts), desc="answering", unit="prompt", disable=not progress)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                answers[i] = text.strip()
            bar.update(len(idx))
    bar.close()
    return answers


def endpoint_role(endpoint: EndpointModel, cfg: EvalParams) -> Any:
    """The LLM role that answers like a local policy: same token budget, greedy when eval is greedy."""
    from libra.config import LLMRole

    return LLMRole(
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key_env=endpoint.api_key_env,
        temperature=0.0 if cfg.greedy else SAMPLING_TEMPERATURE,
        max_tokens=cfg.max_new_tokens,
        seed=SAMPLING_SEED,
    )


def answer_endpoint(
    name: str, prompts: Sequence[str], llm: LLMParams, cfg: EvalParams, usage_path: str | os.PathLike[str]
) -> list[str]:
    """Answers from an OpenAI-compatible endpoint; any failed call fails the stage (answers are cached)."""
    from libra.llm.client import ChatRequest, open_client

    role = endpoint_role(cfg.endpoints[name], cfg)
    requests = [ChatRequest(messages=[{"role": "user", "content": p}]) for p in prompts]
    with open_client(llm, role, stage=f"answer-{name}", usage_path=usage_path) as client:
        results = client.run(requests, desc=f"answering ({name})")
    failed = [(i, r.error) for i, r in enumerate(results) if not r.ok or r.text is None]
    if failed:
        i, err = failed[0]
        raise LibraError(
            f"{len(failed)} of {len(prompts)} calls to {name} failed (first: prompt {i}: {err}); "
            "rerun the stage: answers already received are cached"
        )
    return [str(r.text).strip() for r in results]


def answer_rows(prompts: pl.DataFrame, responses: Sequence[str], model_name: str) -> pl.DataFrame:
    if len(responses) != prompts.height:
        raise LibraError(f"got {len(responses)} answers for {prompts.height} prompts; this is a bug, please report it")
    return prompts.with_columns(
        pl.Series("response", list(responses), dtype=pl.String),
        pl.lit(model_name).alias("model"),
    )
