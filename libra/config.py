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
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


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


BaseUrl = Annotated[str, AfterValidator(check_base_url)]
ApiKeyEnv = Annotated[str, AfterValidator(check_api_key_env)]


class LLMRole(Section):
    """One LLM role (generator or judge): where it is served and how it samples."""

    base_url: BaseUrl = Field(
        "local", description="`local` starts the embedded llama.cpp server; otherwise any OpenAI-compatible http(s) base URL"
    )
    model: str = Field("smollm2-135m-instruct", min_length=1, description="model name sent to the endpoint (and part of the cache key)")
    api_key_env: ApiKeyEnv = Field(
        "OPENAI_API_KEY", min_length=1, description="the environment variable holding the key; keys are never read from files"
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature")
    max_tokens: int = Field(128, ge=1, le=32768, description="completion cap")
    seed: int = Field(0, ge=0, description="sampling seed (retries use a shifted seed)")
    concurrency: int = Field(1, ge=1, le=1024, description="requests in flight: 1 for the embedded llama.cpp server, which serves one request at a time (more only queue there and time out); 8-64 for vLLM or a hosted API")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(4, ge=0, le=20, description="retries with exponential backoff and jitter; Retry-After honoured")


# The embedded server's weights: the shipped GGUF or one of the copies libra/llm/weights.py makes.
LlamaWeights = Literal["q8_0", "shipped"]


class LocalServer(Section):
    """The embedded llama.cpp server used when base_url is 'local'."""

    n_ctx: int = Field(2048, ge=256, description="context length of the embedded server")
    n_threads: int = Field(1, ge=1, description="CPU threads of each embedded server")
    servers: int = Field(
        2, ge=1, le=64,
        description="embedded servers started side by side; each serves one request at a time, and the client sends "
        "request i to server i mod servers (so the data do not depend on timing); servers x n_threads = the cores to use",
    )  # fmt: skip
    startup_timeout_s: float = Field(120.0, gt=0, description="seconds to wait for the embedded server to answer")
    weights: LlamaWeights = Field(
        "q8_0",
        description="`q8_0`: a Q8_0 copy of the shipped Q4_1 GGUF, made once under .libra/models (reads prompts about 1.7x "
        "faster, the same model to next-token KL 0.006-0.007); `shipped`: the Q4_1 file as shipped (libra/llm/weights.py)",
    )


class LLMParams(Section):
    cache_path: str = Field(".libra/cache/llm.sqlite", min_length=1, description="the shared call cache (one SQLite file for all stages)")
    generator: LLMRole = LLMRole()
    judge: LLMRole = LLMRole(temperature=0.0, max_tokens=96)
    local: LocalServer = LocalServer()


class CatalogParams(Section):
    max_unresolved_frac: float = Field(
        0.35, ge=0.0, le=1.0, description="the catalog stage fails above this share of unresolved names"
    )


class SeedsParams(Section):
    n_illegitimate: int = Field(24, ge=1, description="illegitimate seeds")
    legit_ratio: float = Field(
        1.0, ge=0.0, le=10.0, description="legitimate seeds per illegitimate seed (the paper's ratio sweep)"
    )
    mode: Literal["text", "smiles"] = Field("text", description="`text` names compounds by name, `smiles` by SMILES")
    seed: int = Field(0, ge=0, description="sampling seed")
    tasks: list[Task] = Field(default_factory=lambda: list(TASKS), min_length=1, description="tasks to draw seeds from (each once)")
    policy: dict[CompoundClass, dict[Task, Label]] = Field(
        description="`legitimate` or `illegitimate` for each (class, task): the dual-use table"
    )

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[str]) -> list[str]:
        twice = sorted({t for t in tasks if tasks.count(t) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once (each would give duplicate seed_ids); list each task once")
        return tasks

    @model_validator(mode="after")
    def _policy_covers_tasks(self) -> SeedsParams:
        for cls in ("controlled", "common"):
            table = self.policy.get(cls)  # type: ignore[call-overload]
            if table is None:
                raise ValueError(f"policy.{cls} is missing; add a task -> label table for it")
            missing = [t for t in self.tasks if t not in table]
            if missing:
                raise ValueError(f"policy.{cls} has no label for task(s) {missing}")
        return self


class TripletsParams(Section):
    paraphrase_refusals: bool = Field(
        True, description="let the generator reword template refusals (falls back to the template)"
    )
    answer_max_tokens: int = Field(128, ge=8, description="cap for legitimate answers")


class RephraseParams(Section):
    n_prompt: int = Field(2, ge=0, le=20, description="paraphrases per prompt")
    n_answer: int = Field(1, ge=0, le=20, description="paraphrases per chosen answer")
    max_pairs_per_seed: int = Field(
        4, ge=1, description="cap on crossed pairs per seed (the paper had about 25; 4 keeps rephrase under 2 minutes on 2 CPU cores)"
    )
    near_dup_threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="character n-gram Jaccard above which a paraphrase is a duplicate"
    )
    ngram: int = Field(3, ge=1, le=8, description="n of the character n-grams")
    seed: int = Field(0, ge=0, description="shuffle seed for the cap")


class SplitParams(Section):
    strategy: Literal["by_compound", "random"] = Field(
        "by_compound", description="`by_compound` (unseen compounds in test) or `random` (the paper's)"
    )
    test_frac: float = Field(0.25, gt=0.0, lt=1.0, description="test share")
    seed: int = Field(0, ge=0, description="split seed")


class BaseModelParams(Section):
    source: str = Field("smollm2-gguf", description="`smollm2-gguf`, a local transformers checkpoint dir, or a hub id")


class LoraParams(Section):
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout on the adapter input (0: off; at 0.05 its random masks took a fifth of a CPU step, README Results)")
    target_modules: list[str] | str = Field(
        "all-linear", description="`all-linear` or a non-empty list of module names"
    )
    first_layer: int = Field(
        15, ge=0,
        description="LoRA only on decoder layers >= this index (0: all layers); the layers below stay the frozen base, "
        "so the dpo step runs them once per pair, not per step, and never back-propagates through them",
    )  # fmt: skip

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            if value != "all-linear":
                raise ValueError(f"{value!r} is neither all-linear nor a list of module names; use all-linear or [q_proj, v_proj]")
            return value
        if not value or not all(m.strip() for m in value):
            raise ValueError("is empty; list module names such as [q_proj, v_proj], or use all-linear")
        return value


LossType = Literal["sigmoid", "ipo", "hinge", "robust", "sft"]


class DPOParams(Section):
    beta: float = Field(0.1, gt=0.0, description="DPO temperature")
    loss_type: list[LossType] = Field(
        default_factory=lambda: ["sigmoid", "sft"], min_length=1,
        description="any of sigmoid, ipo, hinge, robust, sft (combined, weighted by `loss_weights`)",
    )  # fmt: skip
    loss_weights: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        None, description="one non-negative weight per loss type (null: equal weights)"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="for robust / conservative DPO")
    opening_weight: float = Field(
        1.0, ge=0.0,
        description="weight of a cross-entropy on the first `opening_tokens` tokens of every chosen answer, added to the loss: "
        "whether an answer refuses is decided there, and a whole-answer loss gives those tokens little weight (0 = off)",
    )  # fmt: skip
    opening_tokens: int = Field(4, ge=1, description="chosen-answer tokens the opening_weight term covers")
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="learning-rate schedule"
    )
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="share of steps spent warming up")
    max_steps: int = Field(240, ge=1, description="optimiser steps")
    batch_size: int = Field(4, ge=1, description="pairs per step (global batch = batch_size * grad_accum)")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_prompt_length: int = Field(96, ge=8, description="prompt tokens kept (the last ones)")
    max_length: int = Field(224, ge=16, description="prompt + answer tokens")
    seed: int = Field(0, ge=0, description="training seed")
    lora: LoraParams = LoraParams()
    num_threads: int = Field(0, ge=0, description="torch threads (0 = one per physical core)")
    num_processes: int = Field(1, ge=1, description="> 1 relaunches the stage under torchrun (DDP; gloo on CPU)")
    save_steps: int = Field(10, ge=1, description="checkpoint interval (resume after a kill)")

    @model_validator(mode="after")
    def _lengths(self) -> DPOParams:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})"
            )
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError("loss_weights must have one weight per loss_type entry")
        if self.loss_weights is not None and not any(w > 0 for w in self.loss_weights):
            raise ValueError("loss_weights are all 0, so nothing would be trained; give at least one weight > 0")
        return self


AugmentFraming = Literal["hypothetical", "fiction", "roleplay", "override", "identifier", "multipart"]
AUGMENT_FRAMINGS: tuple[str, ...] = get_args(AugmentFraming)


class AugmentParams(Section):
    """The levers of the augment stage (libra/data/augment.py), each measurable with `dvc exp run -S`."""

    self_distill_legit: bool = Field(True, description="legitimate prompts: chosen = the base policy's own greedy answer")
    contrast: int = Field(96, ge=0, description="general-domain benign contrast pairs (0 = none; at most 242)")
    framed: bool = Field(True, description="add adversarially framed prompts for both labels")
    framed_per_seed: int = Field(2, ge=0, le=len(AUGMENT_FRAMINGS), description="cap on framed prompts per training seed")
    framings: list[AugmentFraming] = Field(
        default_factory=lambda: list(AUGMENT_FRAMINGS), min_length=1, description="framing kinds used"
    )
    task_variants: int = Field(
        3, ge=0, le=8, description="prompts per training seed that ask its own task in training-only other words (templates.TASK_VARIANTS), with the seed's answers"
    )
    mirror_refusals: bool = Field(
        False, description="legitimate pairs' rejected answer = a refusal from the templates illegitimate pairs prefer (not a differently worded over-refusal)"
    )
    natural_openers: bool = Field(
        False, description="illegitimate pairs' rejected answer = the first words of an answer as the policy starts one, cut before any content (not an empty step list)"
    )
    status_preamble: bool = Field(
        False,
        description="chemistry pairs whose task's label depends on the compound's class (synthesis, acquisition) open both "
        "answers with the compound's status: chosen the true one ('X is a controlled chemical.' / 'X is not a controlled "
        "chemical.'), rejected the false one, so the pair differs first where the compound decides",
    )
    status_pairs: bool = Field(
        False,
        description="with status_preamble: one more pair per status-prefixed prompt whose two answers are its chosen answer "
        "behind the true and behind the false status sentence, so they differ in the status token alone",
    )
    catalog_compounds: int = Field(
        64, ge=0, description="catalog compounds in no seed (never eval-reserved ones) each giving one legitimate and one illegitimate training pair"
    )
    max_new_tokens: int = Field(40, ge=8, le=1024, description="token budget of each self-distilled answer")
    batch_size: int = Field(32, ge=1, description="generation batch size (greedy answers depend on it slightly)")
    seed: int = Field(0, ge=0, description="seed of the contrast-prompt sample")

    @model_validator(mode="after")
    def _status(self) -> AugmentParams:
        if self.status_pairs and not self.status_preamble:
            raise ValueError("status_pairs needs status_preamble: true (its pairs teach the sentence the preamble opens with)")
        return self


class ComputeParams(Section):
    """How the torch stages (ref_logps, dpo, answer, augment) run."""

    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 on CUDA with bf16 and on CPUs with native bf16, else fp32 (libra/train/precision.py)"
    )


class GateParams(Section):
    """The readout gate (libra/eval/gate.py): a linear probe on the base model's hidden states, used by `<model>+gate`."""

    layer: int | Literal["auto"] = Field(
        "auto", description="hidden-state index the probe reads (0 = embeddings); auto: the best grouped-CV AUC on the training prompts among every 4th and the last"
    )
    C: float = Field(0.05, gt=0, description="inverse L2 strength of its logistic regression (a few hundred training prompts and about a thousand bank prompts, 2 x hidden features)")
    threshold: float = Field(0.0, description="flag a prompt when its decision score exceeds this (0: the balanced boundary; higher withholds less)")
    domain_threshold: float | None = Field(
        0.0, description="chemistry scope: flag only prompts the gate's domain probe (chemistry against general-domain prompts) also scores above this (0: its own boundary); null: prompts of any domain"
    )
    domain_framed: int = Field(
        2, ge=0, le=5, description="the domain probe also reads each (compound, task) pair of the training data wrapped in this many training framings (story, role, override, hypothetical, second question) as chemistry; 0: none"
    )
    bank_wordings: int = Field(
        6, ge=0, description="prompt bank: each (compound, task) pair of the training data asked in this many training-only wordings of its task (rotated so all 19 are used), beside every general-domain contrast prompt; 0: no bank"
    )
    general_share: float = Field(
        0.25, gt=0, lt=1, description="share of the legitimate prompts' weight carried by general-domain prompts (the rest by chemistry ones); each label carries half"
    )

    @field_validator("layer")
    @classmethod
    def _layer(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("gate.layer must be auto or a hidden-state index >= 0")
        return value


class EndpointModel(Section):
    """A model served by any OpenAI-compatible endpoint, scored like the local ones."""

    base_url: BaseUrl = Field(description="the endpoint's OpenAI-compatible http(s) base URL")
    model: str = Field(min_length=1, description="model name at that endpoint")
    api_key_env: ApiKeyEnv = Field("OPENAI_API_KEY", description="the environment variable holding its key")


_XSTEST_KEYS = {"subset"}
_IN_DOMAIN_KEYS = {"unseen_compounds", "unseen_per_label", "seen_per_label", "robustness_per_label"}


class SuiteSpec(BaseModel):
    """One entry of `eval.suites`: a builtin suite or a user file (JSONL, CSV or parquet)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    builtin: Literal["in_domain", "xstest"] | None = Field(None, description="a builtin suite: `in_domain` or `xstest`")
    path: str | None = Field(None, description="or a suite file of your own (.jsonl, .csv or .parquet)")
    seed: int = Field(0, ge=0, description="sampling seed of the suite")
    subset: int = Field(150, ge=0, description="xstest: prompts in the stratified subset (0 = all 450)")
    unseen_compounds: int = Field(
        24, ge=1, description="in_domain: compounds in no training pair (the test split's, topped up from the catalog)"
    )
    unseen_per_label: int = Field(60, ge=0, description="in_domain: prompts per label about unseen compounds")
    seen_per_label: int = Field(25, ge=0, description="in_domain: prompts per label about training compounds")
    robustness_per_label: int = Field(48, ge=0, description="in_domain: reframed prompts per label")

    @model_validator(mode="after")
    def _one_source(self) -> SuiteSpec:
        if (self.builtin is None) == (self.path is None):
            raise ValueError(
                "give exactly one of builtin (in_domain | xstest) or path (a .jsonl, .csv or .parquet file)"
            )
        if self.path is not None and Path(self.path).suffix.lower() not in (".jsonl", ".csv", ".parquet"):
            raise ValueError(f"path {self.path!r} must end in .jsonl, .csv or .parquet")
        applies = {"xstest": _XSTEST_KEYS, "in_domain": _IN_DOMAIN_KEYS}.get(self.builtin or "", set())
        # A key of the other builtin is an error only when it would matter (not its default), so
        # a dumped spec (every field) validates again.
        fields = type(self).model_fields
        stray = sorted(k for k in (_XSTEST_KEYS | _IN_DOMAIN_KEYS) - applies if getattr(self, k) != fields[k].default)
        if stray:
            owner = "xstest" if stray[0] in _XSTEST_KEYS else "in_domain"
            raise ValueError(f"{stray[0]} applies only to builtin {owner}; remove it from this suite")
        return self


_SUITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def check_suites(suites: dict[str, SuiteSpec]) -> dict[str, SuiteSpec]:
    """For a pydantic field validator on `eval.suites`: names become file names and DVC keys."""
    if not suites:
        raise ValueError("lists no suite; name at least one (in_domain, xstest, or a file of your own)")
    for name in suites:
        if not _SUITE_NAME.match(name):
            raise ValueError(
                f"suite name {name!r} must be lowercase letters, digits, _ or - (it names data/suites/<name>.parquet)"
            )
    return suites


DEFAULT_SUITES: dict[str, SuiteSpec] = {
    "in_domain": SuiteSpec(builtin="in_domain"),
    "xstest": SuiteSpec(builtin="xstest"),
}


# `dpo~0.5`: the dpo adapter with its LoRA delta scaled by 0.5 at answer time (a frontier point;
# libra/eval/answer.py accepts scales up to 2, which extrapolate).
ADAPTER_SCALE = re.compile(r"dpo~(0|1|2)(\.\d+)?")
# `base+gate`, `dpo+gate`, `dpo~0.5+gate`: that model behind the readout gate (libra/eval/gate.py).
GATE_SUFFIX = "+gate"


def split_gate(name: str) -> tuple[str, bool]:
    """`dpo+gate` -> (`dpo`, True); `dpo` -> (`dpo`, False)."""
    local = name.removesuffix(GATE_SUFFIX)
    return local, local != name


class EvalParams(Section):
    models: list[str] = Field(
        default_factory=lambda: ["base", "dpo", "base+gate"], min_length=1,
        description="models to judge and score: `base`, `dpo`, `dpo~<lambda>` (the adapter's delta scaled), any of these + `+gate` "
        "(behind the readout gate: `base+gate`) or a key of `eval.endpoints`",
    )  # fmt: skip
    endpoints: dict[str, EndpointModel] = Field(
        default_factory=dict, description="hosted models to score like the local ones, by name"
    )
    max_new_tokens: int = Field(24, ge=1, description="answer length cap (cut to 24 tokens, 1,662 of the 1,664 40-token answers of four models keep their rules verdict; bench/answer_length.py --judged)")
    batch_size: int = Field(48, ge=1, description="prompts per generation batch")
    greedy: bool = Field(True, description="greedy decoding (false: sample)")
    suites: dict[str, SuiteSpec] = Field(
        default_factory=lambda: dict(DEFAULT_SUITES),
        description="evaluation suites, name -> {builtin: in_domain | xstest, ...} or {path: a .jsonl, .csv or .parquet file}",
    )

    @field_validator("suites")
    @classmethod
    def _suites(cls, value: dict[str, SuiteSpec]) -> dict[str, SuiteSpec]:
        return check_suites(value)

    @model_validator(mode="after")
    def _known_models(self) -> EvalParams:
        for name in self.endpoints:
            if name in ("base", "dpo") or not _ENDPOINT_NAME.fullmatch(name):
                raise ValueError(
                    f"endpoints name {name!r} names output files (data/answers/<name>.parquet); use letters, digits, "
                    "'-' and '_' only, and not base or dpo"
                )
        twice = sorted({m for m in self.models if self.models.count(m) > 1})
        if twice:
            raise ValueError(f"models lists {', '.join(twice)} more than once; list each model once")
        for name in self.models:
            local, gated = split_gate(name)
            if local in ("base", "dpo") or ADAPTER_SCALE.fullmatch(local) or (not gated and name in self.endpoints):
                continue
            raise ValueError(
                f"models lists {name!r}, which is neither base, dpo, dpo~<lambda> (the adapter scaled by lambda in [0, 2], "
                "e.g. dpo~0.5), one of these + '+gate' (e.g. base+gate) nor a key of eval.endpoints"
            )
        return self


class ClassifierParams(Section):
    C: float = Field(4.0, gt=0, description="inverse regularisation of the TF-IDF + logistic-regression refusal judge")
    ngram_max: int = Field(2, ge=1, le=4, description="longest word n-gram of its features")
    test_frac: float = Field(0.2, gt=0, lt=1, description="held-out share for its metrics")
    seed: int = Field(0, ge=0, description="its split seed")


class JudgeParams(Section):
    judges: list[Literal["rules", "classifier", "llm"]] = Field(
        default_factory=lambda: ["rules"], min_length=1,
        description="judges to run; the default is one judge, the rules: no other judge raised held-out accuracy on XSTest (docs/judges.md); add `llm` when `llm.judge` is a capable model",
    )  # fmt: skip
    fusion: Literal["vote", "any_refusal", "llm_only"] = Field(
        "vote", description="`vote`, `any_refusal` (the paper's rule) or `llm_only`"
    )


class JudgeValidationParams(Section):
    """Where the judge is validated against human labels (stage judge_validation)."""

    xstest_dir: str = Field(
        "../shared/xstest", min_length=1,
        description="folder with XSTest's human-labelled completions_*.csv (read where it lies, never copied)",
    )  # fmt: skip
    folds: int = Field(5, ge=1, description="prompt-grouped folds for cross-fitting learned judges")


class ScoreParams(Section):
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the 95% intervals")
    seed: int = Field(0, ge=0, description="bootstrap seed")


class Params(Section):
    llm: LLMParams = LLMParams()
    catalog: CatalogParams = CatalogParams()
    seeds: SeedsParams
    triplets: TripletsParams = TripletsParams()
    rephrase: RephraseParams = RephraseParams()
    split: SplitParams = SplitParams()
    base_model: BaseModelParams = BaseModelParams()
    augment: AugmentParams = AugmentParams()
    compute: ComputeParams = ComputeParams()
    dpo: DPOParams = DPOParams()
    eval: EvalParams = EvalParams()
    gate: GateParams = GateParams()
    classifier: ClassifierParams = ClassifierParams()
    judge: JudgeParams = JudgeParams()
    judge_validation: JudgeValidationParams = JudgeValidationParams()
    score: ScoreParams = ScoreParams()

    @model_validator(mode="after")
    def _scope_has_general_prompts(self) -> Params:
        gated = any(split_gate(m)[1] for m in self.eval.models)
        if gated and self.gate.domain_threshold is not None and self.gate.bank_wordings == 0 and self.augment.contrast == 0:
            raise ValueError(
                "gate.domain_threshold (the chemistry scope) needs general-domain prompts to fit its domain probe, and "
                "gate.bank_wordings and augment.contrast are both 0; set one of them above 0, or gate.domain_threshold to null"
            )
        return self


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _error_key(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The dotted key of an error; drops the union-member tags pydantic adds ('list[str]', ...)."""
    return tuple(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or "'" in p or p in _TYPE_TAGS)))


def _line_of(key: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    for n in range(len(key), 0, -1):
        if key[:n] in lines:
            return lines[key[:n]]
    return None


def _format_error(err: dict[str, Any], lines: dict[tuple[str, ...], int] | None = None) -> str:
    """One problem as `line N: dotted.key ...: what is wrong; how to fix it`."""
    loc = _error_key(tuple(err["loc"]))
    key = ".".join(loc) if loc else "(top level)"
    named = str(err["msg"]).removeprefix("Value error, ").split(" ", 1)[0]  # "loss_weights are all 0": a section
    line = _line_of((*loc, *named.split(".")), lines or {})  # check names its field; point at that line
    at = f"line {line}: " if line is not None else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = ".".join(loc[:-1])
        return f"{at}unknown key {key!r}; remove it or fix its spelling (see docs/params.md for {parent or 'the sections'})"
    if kind == "missing":
        return f"{at}{key} is required but missing; add it to params.yaml"
    msg = err["msg"]
    if kind == "value_error":
        return f"{at}{key}: {msg.removeprefix('Value error, ')}"
    value = err.get("input")
    hint = ""
    if isinstance(value, bool) and kind in ("int_type", "float_type"):
        hint = "; true/false is not a number, write the number"
    elif isinstance(value, float) and not math.isfinite(value):
        hint = "; write a finite number"
    elif isinstance(value, str) and kind in ("int_type", "float_type", "bool_type"):
        hint = "; remove the quotes"
    return f"{at}{key} = {json.dumps(value, default=str)} is invalid: {msg}{hint}"


def _errors_message(problems: list[str], source: str) -> str:
    if len(problems) == 1:
        return f"params: {source}: {problems[0]}"
    shown = problems[:MAX_ERRORS]
    more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
    return f"params: {source}: {len(problems)} problems{more}: " + " | ".join(shown)


def parse_params(raw: Any, source: str = "params.yaml", lines: dict[tuple[str, ...], int] | None = None) -> Params:
    """Validate a loaded mapping; every problem (up to MAX_ERRORS) goes into one ParamsError line."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params: {source} must be a mapping of sections (llm, seeds, dpo, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems: list[str] = []
        seen: set[tuple[str, ...]] = set()
        for err in exc.errors():
            key = _error_key(tuple(err["loc"]))
            if key in seen:  # one input failing every member of a union: report it once
                continue
            seen.add(key)
            problems.append(_format_error(err, lines))  # type: ignore[arg-type]
        raise ParamsError(_errors_message(problems, source)) from None


def _key_lines(node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...], int], dups: list[str]) -> None:
    """Record the line of every mapping key; a key given twice in one mapping is a problem."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            line = key_node.start_mark.line + 1
            if key in lines:
                dups.append(
                    f"lines {lines[key]} and {line}: {'.'.join(key)} is given twice (the second would silently "
                    "replace the first); merge them into one"
                )
                continue
            lines[key] = line
            _key_lines(value_node, key, lines, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _key_lines(item, (*path, str(i)), lines, dups)


def read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse a YAML file: (data, line of each dotted key). Not UTF-8, a syntax error or a
    duplicated key raises ParamsError naming the file and line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParamsError(
            f"params: {path} line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8"
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple[str, ...], int] = {}
        dups: list[str] = []
        if node is not None:
            _key_lines(node, (), lines, dups)
        if dups:
            raise ParamsError(_errors_message(dups, str(path)))
        raw = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise ParamsError(f"params: {path}{where}: invalid YAML: {what}; fix the syntax there") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        loader.dispose()
    return raw, lines


def load_params(path: str | os.PathLike[str] | None = None) -> Params:
    """Load and validate params.yaml (or $LIBRA_PARAMS, or the given path)."""
    p = Path(path or os.environ.get("LIBRA_PARAMS", DEFAULT_PARAMS_PATH))
    if not p.is_file():
        raise ParamsError(f"params: {p} not found; run from the project root or set LIBRA_PARAMS")
    raw, lines = read_yaml(p)
    return parse_params(raw, str(p), lines)


def params_hash(section: BaseModel | dict[str, Any]) -> str:
    """A stable short hash of resolved params, written into model and metrics outputs."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
