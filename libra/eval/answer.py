"""Answer suite prompts with a policy: a local checkpoint (+ a scaled LoRA adapter) or an endpoint.

    suite = read_suite("data/suites/in_domain.parquet")
    model, tok = load_policy("models/base", adapter="models/dpo", scale=0.5)   # the model `dpo~0.5`
    texts = generate(model, tok, suite["prompt"].to_list(), batch_size=48, max_new_tokens=64)
    rows = answer_rows(suite, texts, "dpo~0.5")   # + response (final answer) and reasoning

Model names: `base`, `dpo` (= `dpo~1`), `dpo~<lambda>` (the LoRA delta scaled by lambda
before it is merged: `dpo~0` computes base, `dpo~1` the trained adapter; linear between),
or a key of `eval.endpoints`.

Local generation is greedy decoding written for a small model on a CPU, where a decode
step costs a pass over all weights and the KV cache:
- all prompts share the chat template's opening (SmolLM2's system turn, about 20 tokens):
  its KV cache is computed once and shared by every batch, so only each prompt's own
  tokens are prefilled;
- prompts are sorted by length, so a batch holds prompts of similar length; the padding
  sits between the shared prefix and the prompt, masked, with positions that skip it;
- rows that reach end-of-sequence leave the batch (their KV rows are dropped), so the
  batch shrinks to the rows still writing;
- logits are computed for the last position only; the adapter is merged into the weights;
  `torch.inference_mode`; one thread per core; the dtype from `libra.train.precision`.
The answers are those of `transformers`' `generate` up to floating-point summation order
(a different batch shape can flip a greedy choice where the top two logits tie to ~1e-5);
`bench/answer_throughput.py` measures both, side by side.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from libra.errors import InputError, LibraError, ParamsError
from libra.io import prompt_id  # noqa: F401  (re-exported: the suites and answer tables share these ids)
from libra.train.encode import shared_prefix_length

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from libra.config import EndpointModel, EvalParams, LLMParams
    from libra.train.precision import Precision

# Columns carried from the old test table (`--test`) into every answer row, in output order.
PROMPT_COLUMNS = ("prompt_id", "prompt", "label", "task", "group", "class", "compound", "compound_id")
# Columns every suite table has (libra.eval.suites); any others are carried through as they are.
SUITE_REQUIRED = ("prompt_id", "prompt", "label", "suite", "partition")
ANSWER_COLUMNS = ("model", "response", "reasoning")
LOCAL_MODELS = ("base", "dpo")
# `dpo~0.5`: the dpo adapter with its LoRA delta scaled by 0.5. Scales beyond 1 extrapolate.
MAX_ADAPTER_SCALE = 2.0
# Sampling, when eval.greedy is false, is seeded so a rerun gives the same answers.
SAMPLING_SEED = 0
SAMPLING_TEMPERATURE = 0.7
# A batch drops its finished rows once this share of them has finished (a drop copies the KV cache).
COMPACT_SHARE = 0.125

_SCALED = re.compile(r"^dpo~(\d+(?:\.\d+)?)$")


# --- models -----------------------------------------------------------------------------


def adapter_scale(name: str) -> float | None:
    """The LoRA scale a local model name stands for (`base` 0, `dpo` 1, `dpo~0.5` 0.5); None for an endpoint."""
    if name == "base":
        return 0.0
    if name == "dpo":
        return 1.0
    m = _SCALED.match(name)
    if m is None:
        return None
    scale = float(m.group(1))
    if not 0.0 <= scale <= MAX_ADAPTER_SCALE:
        raise ParamsError(f"model {name!r}: the adapter scale must lie in [0, {MAX_ADAPTER_SCALE:g}]")
    return scale


def is_local_model(name: str) -> bool:
    return adapter_scale(name) is not None


def scale_lora(model: Any, scale: float) -> int:
    """Multiply every LoRA layer's scaling by `scale` (the delta B@A*alpha/r becomes scale times it).

    Returns how many layers were scaled. DoRA's magnitude vector is not linear in the delta,
    so a scaled DoRA adapter is refused.
    """
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in list(module.scaling):
                if scale != 1.0 and module.use_dora.get(name, False):
                    raise LibraError("a DoRA adapter cannot be scaled linearly; use dpo (scale 1) or a plain LoRA adapter")
                module.scaling[name] = module.scaling[name] * scale
            n += 1
    return n


def load_policy(
    base: str | Path,
    adapter: str | Path | None = None,
    *,
    scale: float = 1.0,
    precision: Precision | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base checkpoint, with the LoRA adapter, its delta scaled by `scale`, merged into its weights.

    Merging removes the adapter's extra matmuls from every forward pass; the merged model
    computes the same function. `scale` 0 (or no adapter) is the base model. The weights
    get the dtype and device of `precision` (fp32 on CPU when none is given).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from libra.train.precision import bf16_matmul_weights

    base = Path(base)
    if not (base / "config.json").exists():
        raise LibraError(f"{base} is not a transformers checkpoint (no config.json); run `dvc repro base_model`")
    dtype = precision.torch_dtype if precision is not None else torch.float32
    device = precision.device if precision is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(base)
    # The adapter is merged in float32 and the result cast once, so a bf16 model is not merged in bf16.
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None and scale != 0.0:
        from peft import PeftModel

        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").exists():
            raise LibraError(f"{adapter} is not a PEFT adapter (no adapter_config.json); run `dvc repro dpo`")
        peft_model = PeftModel.from_pretrained(model, adapter)
        if scale != 1.0:
            scale_lora(peft_model, scale)
        model = peft_model.merge_and_unload()
    model.to(device=device, dtype=dtype).eval()
    if precision is not None and precision.autocast_bf16:
        model.requires_grad_(False)
        bf16_matmul_weights(model)  # the operands autocast would cast at every decode step, cast once
    return model, tokenizer


# --- generation -------------------------------------------------------------------------


def chat_texts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[str]:
    """Each prompt as a one-turn chat, templated once, ending where the assistant's turn begins."""
    return [
        str(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True))
        for p in prompts
    ]


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each templated prompt (the template already holds the special tokens)."""
    return [list(ids) for ids in tokenizer(chat_texts(tokenizer, prompts), add_special_tokens=False)["input_ids"]]


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokens that end an answer, as `generate` reads them (generation config, else the tokenizer)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.config.eos_token_id if model.config.eos_token_id is not None else tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def generate_ids(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    eos: set[int],
    pad_id: int,
    greedy: bool = True,
    autocast_bf16: bool = False,
    progress: Any = None,
) -> list[list[int]]:
    """New token ids for each prompt (end-of-sequence excluded), in the order of `prompt_ids`."""
    import torch

    device = model.device
    n = len(prompt_ids)
    out: list[list[int]] = [[] for _ in range(n)]
    if n == 0:
        return out
    if device.type == "cpu" and not autocast_bf16 and model.get_output_embeddings().weight.dtype == torch.bfloat16:
        raise LibraError("this model was loaded for CPU bf16 autocast (load_policy with a bf16 precision); "
                         "pass the same precision to generate, or load it with precision=None")  # fmt: skip
    gen = torch.Generator(device="cpu").manual_seed(SAMPLING_SEED)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16 and device.type == "cpu" else nullcontext()
    with torch.inference_mode(), cast:
        p = shared_prefix_length(prompt_ids)
        prefix_kv = None
        if p:
            prefix = torch.tensor([list(prompt_ids[0][:p])], device=device)
            cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache
            prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        order = sorted(range(n), key=lambda i: (-len(prompt_ids[i]), i))
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            for i, ids in zip(idx, _decode_batch(model, [prompt_ids[i][p:] for i in idx], p, prefix_kv,
                                                  max_new_tokens, eos, pad_id, greedy, gen), strict=True):  # fmt: skip
                out[i] = ids
            if progress is not None:
                progress.update(len(idx))
    return out


def _decode_batch(
    model: Any, suffixes: list[Sequence[int]], p: int, prefix_kv: list[tuple[Any, Any]] | None,
    max_new_tokens: int, eos: set[int], pad_id: int, greedy: bool, gen: Any,
) -> list[list[int]]:  # fmt: skip
    import torch
    from transformers import DynamicCache

    device = model.device
    b, s = len(suffixes), max(len(x) for x in suffixes)
    ids = torch.full((b, s), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((b, p + s), dtype=torch.long, device=device)
    mask[:, :p] = 1
    for r, suf in enumerate(suffixes):
        ids[r, s - len(suf) :] = torch.tensor(list(suf), device=device)
        mask[r, p + s - len(suf) :] = 1
    # Positions count real tokens only, so a padded row sees the positions an unpadded one does.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
    cache = DynamicCache(config=model.config)
    if prefix_kv is not None:
        for layer, (k, v) in enumerate(prefix_kv):
            cache.update(k.expand(b, -1, -1, -1).contiguous(), v.expand(b, -1, -1, -1).contiguous(), layer)
    eos_t = torch.tensor(sorted(eos), device=device)
    rows = torch.arange(b, device=device)  # which original row each live batch row is
    done = torch.zeros(b, dtype=torch.bool, device=device)
    new: list[list[int]] = [[] for _ in range(b)]
    last = pos[:, -1]
    for step in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]  # fmt: skip
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / SAMPLING_TEMPERATURE, -1).cpu()
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(device)
        finished = torch.isin(nxt, eos_t) | done
        for r, t, f, d in zip(rows.tolist(), nxt.tolist(), finished.tolist(), done.tolist(), strict=True):
            if not f and not d:
                new[r].append(t)
        done = finished
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if int(done.sum()) >= max(1, math.ceil(COMPACT_SHARE * len(rows))):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, nxt, mask, last, done = rows[keep], nxt[keep], mask[keep], last[keep], done[keep]
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=-1)
        last = last + 1
        ids, pos = nxt.unsqueeze(-1), last.unsqueeze(-1)
    return new


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    greedy: bool = True,
    progress: bool = True,
    precision: Precision | None = None,
) -> list[str]:
    """Answers to `prompts`, in their order. Greedy decoding is deterministic for a given batch size."""
    from tqdm.auto import tqdm

    ids = prompt_token_ids(tokenizer, prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = tqdm(total=len(ids), desc="answering", unit="prompt", disable=not progress)
    new = generate_ids(
        model, ids, batch_size=batch_size, max_new_tokens=max_new_tokens, eos=eos_ids(model, tokenizer),
        pad_id=pad, greedy=greedy, autocast_bf16=bool(precision and precision.autocast_bf16), progress=bar,
    )  # fmt: skip
    bar.close()
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


# --- reasoning --------------------------------------------------------------------------


def split_answer(text: str | None, reasoning_content: str | None = None) -> tuple[str, str | None]:
    """(final answer, reasoning or None): a `<think>` block (closed or not) is split off the answer;
    an endpoint's `reasoning_content` comes first in the reasoning."""
    from libra.eval.judges.reasoning import split_reasoning

    final, think = split_reasoning(text or "")
    parts = [x.strip() for x in (reasoning_content, think) if x and x.strip()]
    return final, ("\n\n".join(parts) if parts else None)


# --- endpoints --------------------------------------------------------------------------


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
    """Answers from an OpenAI-compatible endpoint; any failed call fails the stage (answers are cached).

    A reasoning model's `reasoning_content` comes back inside the text as a leading
    `<think>...</think>` block (the client's `keep_reasoning`), which `answer_rows` splits off.
    """
    from libra.llm.client import ChatRequest, open_client

    role = endpoint_role(cfg.endpoints[name], cfg)
    requests = [ChatRequest(messages=[{"role": "user", "content": p}], keep_reasoning=True) for p in prompts]
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


# --- tables -----------------------------------------------------------------------------


def read_suite(path: str | os.PathLike[str]) -> pl.DataFrame:
    """A suite table (libra.eval.suites), every column kept, checked for what answering needs."""
    from libra.io import read_parquet

    suite = read_parquet(path)
    missing = [c for c in SUITE_REQUIRED if c not in suite.columns]
    if missing:
        raise InputError(f"suite {path} lacks column(s) {missing}; rebuild it with `dvc repro suites`")
    clash = [c for c in ANSWER_COLUMNS if c in suite.columns]
    if clash:
        raise InputError(f"suite {path} already has column(s) {clash}, which answering writes; rename them")
    empty = suite.with_row_index("row").filter(pl.col("prompt").is_null() | (pl.col("prompt").str.strip_chars() == ""))
    if empty.height:
        raise InputError(f"suite {path} row {empty['row'][0]}: column prompt is empty")
    dup = suite.filter(pl.col("prompt_id").is_duplicated())
    if dup.height:
        raise InputError(f"suite {path}: prompt_id {dup['prompt_id'][0]!r} occurs {dup.height} times; ids must be unique")
    return suite.sort("prompt_id")


def unique_prompts(test: pl.DataFrame) -> pl.DataFrame:
    """One row per distinct prompt of the old test table (several pairs per prompt), sorted by prompt_id.

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


def answer_rows(prompts: pl.DataFrame, texts: Sequence[str], model_name: str) -> pl.DataFrame:
    """Every prompt column, then model, response (the final answer) and reasoning (the trace, or null)."""
    if len(texts) != prompts.height:
        raise LibraError(f"got {len(texts)} answers for {prompts.height} prompts; this is a bug, please report it")
    split = [split_answer(t) for t in texts]
    return prompts.with_columns(
        pl.lit(model_name).alias("model"),
        pl.Series("response", [s[0] for s in split], dtype=pl.String),
        pl.Series("reasoning", [s[1] for s in split], dtype=pl.String),
    )
