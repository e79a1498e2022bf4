"""Typed params: one pydantic model per params.yaml section.

    from libra.config import load_params
    params = load_params()          # reads ./params.yaml, or $LIBRA_PARAMS
    params.dpo.beta

Unknown keys, wrong types and out-of-range values raise ParamsError with one line that
names the dotted key, the value and what is allowed. Stages read params only from here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from libra.errors import ParamsError

DEFAULT_PARAMS_PATH = "params.yaml"

Task = Literal[
    "synthesis",
    "acquisition",
    "weaponisation",
    "evading_controls",
    "properties",
    "handling_storage",
    "exposure_first_aid",
    "detection",
    "history_regulation",
    "uses",
]
TASKS: tuple[str, ...] = get_args(Task)
CompoundClass = Literal["controlled", "common"]
Label = Literal["legitimate", "illegitimate"]


# At most this many problems are reported at once.
MAX_ERRORS = 5


class Section(BaseModel):
    # strict: `max_steps: true` or `beta: "0.1"` is an error, not 1 or 0.1 (an int is still a
    # valid float); allow_inf_nan=False: `.inf` and `.nan` are errors.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_base_url(value: str) -> str:
    """'local' exactly, or an http(s) URL with a host; anything else is a ValueError with a hint."""
    if value == "local":
        return value
    if value.strip().lower() == "local":
        raise ValueError("base_url must be exactly 'local' (lowercase, no spaces) for the embedded server")
    parts = urlsplit(value)
    if value != value.strip() or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "base_url must be 'local' or an http(s) URL with a host, such as http://127.0.0.1:8000/v1 "
            "or https://api.openai.com/v1"
        )
    return value


def check_api_key_env(value: str) -> str:
    """The name of an environment variable; a value shaped like a key is refused without echoing it."""
    looks_like_key = (
        value.startswith(("sk-", "sk_")) or not _ENV_NAME.fullmatch(value) or (len(value) >= 24 and "_" not in value)
    )
    if looks_like_key:
        raise ValueError(
            "api_key_env must name an environment variable, not hold the key; "
            "set it to a name such as OPENAI_API_KEY and export the key in that variable"
        )
    return value


class LLMRole(Section):
    """One LLM role (generator or judge): where it is served and how it samples."""

    base_url: str = Field("local", description="'local' starts the embedded llama.cpp server")
    model: str = Field("smollm2-135m-instruct", min_length=1)
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, description="env var holding the key")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(128, ge=1, le=32768)
    seed: int = Field(0, ge=0)
    concurrency: int = Field(4, ge=1, le=1024)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)


class LocalServer(Section):
    """The embedded llama.cpp server used when base_url is 'local'."""

    n_ctx: int = Field(2048, ge=256)
    n_threads: int = Field(2, ge=1)
    startup_timeout_s: float = Field(120.0, gt=0)


class LLMParams(Section):
    cache_path: str = ".libra/cache/llm.sqlite"
    generator: LLMRole = LLMRole()
    judge: LLMRole = LLMRole(temperature=0.0, max_tokens=64)
    local: LocalServer = LocalServer()


class CatalogParams(Section):
    path: str = "data/catalog/compounds.csv"
    max_unresolved_frac: float = Field(0.35, ge=0.0, le=1.0)


class SeedsParams(Section):
    n_illegitimate: int = Field(60, ge=1)
    legit_ratio: float = Field(1.0, ge=0.0, le=10.0, description="legitimate seeds per illegitimate seed")
    mode: Literal["text", "smiles"] = "text"
    seed: int = Field(0, ge=0)
    tasks: list[Task] = Field(default_factory=lambda: list(TASKS), min_length=1)
    policy: dict[CompoundClass, dict[Task, Label]]

    @model_validator(mode="after")
    def _policy_covers_tasks(self) -> "SeedsParams":
        for cls in ("controlled", "common"):
            table = self.policy.get(cls)  # type: ignore[call-overload]
            if table is None:
                raise ValueError(f"policy.{cls} is missing; add a task -> label table for it")
            missing = [t for t in self.tasks if t not in table]
            if missing:
                raise ValueError(f"policy.{cls} has no label for task(s) {missing}")
        return self


class TripletsParams(Section):
    paraphrase_refusals: bool = True
    answer_max_tokens: int = Field(160, ge=8)


class RephraseParams(Section):
    n_prompt: int = Field(2, ge=0, le=20)
    n_answer: int = Field(1, ge=0, le=20)
    max_pairs_per_seed: int = Field(25, ge=1)
    near_dup_threshold: float = Field(0.9, gt=0.0, le=1.0)
    ngram: int = Field(3, ge=1, le=8)
    seed: int = Field(0, ge=0)


class SplitParams(Section):
    strategy: Literal["by_compound", "random"] = "by_compound"
    test_frac: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)


class BaseModelParams(Section):
    source: str = Field("smollm2-gguf", description="'smollm2-gguf', a local path, or a hub id")


class LoraParams(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


LossType = Literal["sigmoid", "ipo", "hinge", "robust", "sft"]


class DPOParams(Section):
    beta: float = Field(0.1, gt=0.0)
    loss_type: list[LossType] = Field(default_factory=lambda: ["sigmoid", "sft"], min_length=1)
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    learning_rate: float = Field(5e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    max_steps: int = Field(60, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_prompt_length: int = Field(128, ge=8)
    max_length: int = Field(256, ge=16)
    seed: int = Field(0, ge=0)
    lora: LoraParams = LoraParams()
    num_threads: int = Field(0, ge=0, description="0 = one per physical core")
    num_processes: int = Field(1, ge=1)
    save_steps: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _lengths(self) -> "DPOParams":
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})"
            )
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError("loss_weights must have one weight per loss_type entry")
        return self


class ComputeParams(Section):
    """How the torch stages (ref_logps, dpo, answer, augment) run."""

    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 on CUDA with bf16 and on CPUs with native bf16, else fp32 (libra/train/precision.py)"
    )


class EndpointModel(Section):
    """A model served by any OpenAI-compatible endpoint, scored like the local ones."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"


class EvalParams(Section):
    models: list[str] = Field(default_factory=lambda: ["base", "dpo"], min_length=1)
    endpoints: dict[str, EndpointModel] = Field(default_factory=dict)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    greedy: bool = True

    @model_validator(mode="after")
    def _known_models(self) -> "EvalParams":
        for name in self.models:
            if name not in ("base", "dpo") and name not in self.endpoints:
                raise ValueError(f"model {name!r} is neither base, dpo nor a key of eval.endpoints")
        return self


class ClassifierParams(Section):
    C: float = Field(4.0, gt=0)
    ngram_max: int = Field(2, ge=1, le=4)
    test_frac: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, ge=0)


class JudgeParams(Section):
    judges: list[Literal["rules", "classifier", "llm"]] = Field(
        default_factory=lambda: ["rules", "classifier"], min_length=1
    )
    fusion: Literal["vote", "any_refusal", "llm_only"] = "vote"


class ScoreParams(Section):
    bootstrap: int = Field(1000, ge=0)
    seed: int = Field(0, ge=0)


class Params(Section):
    llm: LLMParams = LLMParams()
    catalog: CatalogParams = CatalogParams()
    seeds: SeedsParams
    triplets: TripletsParams = TripletsParams()
    rephrase: RephraseParams = RephraseParams()
    split: SplitParams = SplitParams()
    base_model: BaseModelParams = BaseModelParams()
    compute: ComputeParams = ComputeParams()
    dpo: DPOParams = DPOParams()
    eval: EvalParams = EvalParams()
    classifier: ClassifierParams = ClassifierParams()
    judge: JudgeParams = JudgeParams()
    score: ScoreParams = ScoreParams()


def _format_error(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) if loc else "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = ".".join(loc[:-1])
        return f"params: unknown key {key!r}; remove it or fix its spelling (see docs/params.md for {parent or 'the sections'})"
    if kind == "missing":
        return f"params: {key} is required but missing; add it to params.yaml"
    value = err.get("input")
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return f"params: {key}: {msg}"
    return f"params: {key} = {json.dumps(value, default=str)} is invalid: {msg}"


def parse_params(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError("params: params.yaml must be a mapping of sections (llm, seeds, dpo, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(exc.errors()[0], raw)) from None


def load_params(path: str | os.PathLike[str] | None = None) -> Params:
    """Load and validate params.yaml (or $LIBRA_PARAMS, or the given path)."""
    p = Path(path or os.environ.get("LIBRA_PARAMS", DEFAULT_PARAMS_PATH))
    if not p.exists():
        raise ParamsError(f"params: {p} not found; run from the project root or set LIBRA_PARAMS")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_params(raw)


def params_hash(section: BaseModel | dict[str, Any]) -> str:
    """A stable short hash of resolved params, written into model and metrics outputs."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
