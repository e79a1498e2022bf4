"""DPO with a LoRA adapter through TRL's DPOTrainer, fed by libra's precomputed inputs.

What libra changes around a stock `DPOTrainer`, and why (each measured in
bench/dpo_throughput.py):
- pairs arrive tokenised by `libra.train.encode` (the function the ref_logps stage used),
  with the reference log-probs as the `ref_chosen_logps` / `ref_rejected_logps` columns
  TRL reads when `precompute_ref_log_probs` is set: no reference forward per step;
- the reference is the adapter-disabled base model (PEFT, `ref_model=None`);
- on CPU, forward and backward run under `torch.autocast("cpu", bfloat16)` (TRL's
  `bf16=True` does not autocast on CPU); weights, adapter, optimizer and loss stay fp32;
- no gradient checkpointing (TRL's default): a 135M model's activations fit, and
  recomputing them costs a third more compute;
- batches are grouped by length (LengthBucketSampler), so little compute goes to padding;
- the LM head scores completion positions only (TRL does so on GPUs, not on CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from libra.config import DPOParams, params_hash
from libra.errors import InputError, ParamsError
from libra.io import write_json
from libra.train.precision import Precision
from libra.train.runtime import load_tokenizer, world_size

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
RUN_FILE = "libra_run.json"
# Params that change neither the trained adapter nor the data order: a checkpoint made
# under other values of these is still valid to resume from.
RESUME_NEUTRAL = ("num_threads", "save_steps")


class LibraDPOTrainer(DPOTrainer):
    """DPOTrainer that takes pre-tokenised pairs with precomputed reference log-probs.

    `cpu_bf16` runs each loss computation (forward, and so the backward graph) under
    bfloat16 autocast on CPU.
    """

    def __init__(self, *args: Any, cpu_bf16: bool = False, **kwargs: Any) -> None:
        self._cpu_bf16 = cpu_bf16
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _precompute_ref_logps(self, dataset, name, batch_size):  # type: ignore[no-untyped-def]
        if set(REF_COLUMNS) <= set(dataset.column_names):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # Keep `length` for LengthBucketSampler; the collator ignores it.
        if "length" not in self._signature_columns:
            self._signature_columns.append("length")

    def _get_train_sampler(self, train_dataset=None):  # type: ignore[no-untyped-def]
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if "length" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        return LengthBucketSampler(
            dataset["length"], self.args.per_device_train_batch_size, self.args.world_size,
            self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        with completion_positions_only():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> contextlib.AbstractContextManager:
        if self._cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return super().autocast_smart_context_manager(cache_enabled)


@contextlib.contextmanager
def completion_positions_only() -> Iterator[None]:
    """Let TRL's fused LM head score only completion positions, on CPU too.

    TRL 1.16 projects hidden states through the 49k-token LM head in tiles and keeps only
    the positions with a label ("compact") when `_use_triton(device)` says so, i.e. on
    CUDA/XPU; elsewhere it scores every position, prompt and padding included, because
    changing shapes would recompile on Neuron. Eager CPU has no such cost, and the head
    was 45 % of a CPU step. Same values (tested); without the hook (another TRL version)
    this is a no-op.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


class LengthBucketSampler(torch.utils.data.Sampler[int]):
    """Random order, but each run of `bucket_batches` global batches is sorted by length.

    Batches then pad little, while the pairs seen in the first k steps are (at bucket
    boundaries) exactly those a plain random sampler would give: transformers'
    LengthGroupedSampler sorts 50 batches at a time, so a short run would see only the
    longest pairs of its first megabatch, and a long-to-short curriculum. Batch order
    inside a bucket is shuffled too.
    """

    def __init__(self, lengths: list[int], batch_size: int, world: int, seed: int, bucket_batches: int = 4) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.span = batch_size * world  # consecutive per-device batches that make one global step
        self.bucket = self.span * bucket_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        out: list[int] = []
        for start in range(0, len(order), self.bucket):
            bucket = sorted(order[start : start + self.bucket], key=lambda i: self.lengths[i])
            steps = [bucket[j : j + self.span] for j in range(0, len(bucket), self.span)]
            for k in torch.randperm(len(steps), generator=g).tolist():
                out.extend(steps[k])
        return iter(out)


def lora_config(params: DPOParams) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=params.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def check_target_modules(model: torch.nn.Module, params: DPOParams) -> None:
    """Fail in one line, before training, when a LoRA target module is not in the model."""
    targets = params.lora.target_modules
    if isinstance(targets, str):  # "all-linear" or a regex: PEFT resolves it
        return
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(targets) - leaf_names)
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ParamsError(
            f"params: dpo.lora.target_modules names {missing}, which the base model does not have; "
            f"its linear layers are {linear} (or use all-linear)"
        )


def per_device_batch(params: DPOParams, world: int) -> int:
    """dpo.batch_size is the global batch (pairs per micro-step over all processes)."""
    if params.batch_size % world:
        raise ParamsError(
            f"params: dpo.batch_size ({params.batch_size}) must be a multiple of the process count ({world}); "
            "change dpo.batch_size or dpo.num_processes"
        )
    return params.batch_size // world


def dpo_config(params: DPOParams, checkpoints: Path, world: int, precision: Precision) -> DPOConfig:
    on_cpu = precision.device == "cpu"
    return DPOConfig(
        output_dir=str(checkpoints),
        beta=params.beta,
        loss_type=list(params.loss_type),
        loss_weights=list(params.loss_weights) if params.loss_weights else None,
        label_smoothing=params.label_smoothing,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,
        max_steps=params.max_steps,
        per_device_train_batch_size=per_device_batch(params, world),
        gradient_accumulation_steps=params.grad_accum,
        max_length=params.max_length,
        precompute_ref_log_probs=True,
        gradient_checkpointing=False,
        # TRL's default (True) would zero every dropout, LoRA's included, silently
        # overriding dpo.lora.dropout; SmolLM2/Llama configs have no other dropout.
        disable_dropout=False,
        bf16=precision.precision == "bf16" and not on_cpu,
        use_cpu=on_cpu,
        seed=params.seed,
        data_seed=params.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=False,
        dataloader_pin_memory=False,
    )


def training_dataset(encoded: pl.DataFrame, ref: pl.DataFrame, ref_source: str) -> Dataset:
    """Join encoded pairs with their reference log-probs; every pair must have one."""
    missing = [c for c in ("pair_id", *REF_COLUMNS) if c not in ref.columns]
    if missing:
        raise InputError(f"{ref_source} lacks column(s) {missing}; rerun `dvc repro ref_logps`")
    joined = encoded.join(ref.select("pair_id", *REF_COLUMNS), on="pair_id", how="left", maintain_order="left")
    absent = joined.filter(pl.col(REF_COLUMNS[0]).is_null())
    if absent.height:
        raise InputError(
            f"{ref_source} has no reference log-probs for pair {absent['pair_id'][0]!r} "
            f"({absent.height} pairs); it was computed for other data: rerun `dvc repro ref_logps`"
        )
    return Dataset.from_dict(joined.drop("pair_id").to_dict(as_series=False))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(params: DPOParams, world: int, model_dir: Path, inputs: list[Path]) -> str:
    """What a checkpoint belongs to: params that shape training, world size, base model and data."""
    shaping = {k: v for k, v in params.model_dump(mode="json").items() if k not in RESUME_NEUTRAL}
    base = [model_dir / n for n in ("config.json", "libra_source.json", "model.safetensors") if (model_dir / n).exists()]
    # The weights file is large; its size and the provenance record identify it well enough.
    digests = [_file_digest(p) if p.suffix != ".safetensors" else str(p.stat().st_size) for p in base + inputs]
    blob = json.dumps({"params": shaping, "world": world, "files": digests}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_checkpoints(checkpoints: Path, fingerprint: str) -> bool:
    """Keep checkpoints of this very run (to resume), discard any other run's. True if any are kept."""
    marker = checkpoints / RUN_FILE
    if checkpoints.exists():
        same = marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint
        if same:
            return any(checkpoints.glob("checkpoint-*"))
        shutil.rmtree(checkpoints)
        print(f"dpo: discarded checkpoints in {checkpoints} from a run with other params or data")
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_json({"fingerprint": fingerprint}, marker)
    return False


def last_checkpoint(checkpoints: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoints)) if checkpoints.exists() else None


def save_adapter(model: Any, out: Path, params: DPOParams, extra: dict[str, Any]) -> None:
    """Write the PEFT adapter and `libra_train.json` to `out`, replacing it as a whole."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    # PEFT stores target_modules from a set, in hash-seed order; sorted, equal adapters give equal bytes.
    config_path = tmp / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_json({"params": params.model_dump(mode="json"), "params_hash": params_hash(params), **extra}, tmp / "libra_train.json")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


STEP_METRICS = {
    "loss": "train/loss",
    "rewards/margins": "train/rewards_margins",
    "rewards/accuracies": "train/rewards_accuracies",
    "rewards/chosen": "train/rewards_chosen",
    "rewards/rejected": "train/rewards_rejected",
    "logps/chosen": "train/logps_chosen",
    "logps/rejected": "train/logps_rejected",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
}


def write_curves(log_history: list[dict[str, Any]], plots_dir: Path) -> None:
    """Per-step curves with DVCLive, from the trainer's log (which survives a resume)."""
    from dvclive import Live

    shutil.rmtree(plots_dir, ignore_errors=True)
    with Live(str(plots_dir), dvcyaml=False, save_dvc_exp=False) as live:
        for entry in log_history:
            if "loss" not in entry or "step" not in entry:
                continue
            live.step = int(entry["step"])
            for key, name in STEP_METRICS.items():
                if key in entry:
                    live.log_metric(name, float(entry[key]))
            live.next_step()


def summarise(log_history: list[dict[str, Any]], train_metrics: dict[str, Any], params: DPOParams, world: int, threads: int) -> dict[str, Any]:
    steps = [e for e in log_history if "loss" in e and "step" in e]
    if not steps:
        raise InputError("dpo: training logged no step; check dpo.max_steps and the training data")
    last = steps[-1]
    runtime = float(train_metrics.get("train_runtime", 0.0))
    ran = int(train_metrics.get("steps_this_run", 0))
    tokens = float(last.get("num_tokens", 0.0))
    return {
        "steps": int(last["step"]),
        "steps_this_run": ran,
        "loss": float(last["loss"]),
        "loss_mean": sum(float(e["loss"]) for e in steps) / len(steps),
        "rewards_margins": float(last.get("rewards/margins", 0.0)),
        "rewards_accuracies": float(last.get("rewards/accuracies", 0.0)),
        "rewards_chosen": float(last.get("rewards/chosen", 0.0)),
        "rewards_rejected": float(last.get("rewards/rejected", 0.0)),
        "train_time_s": round(runtime, 2),
        "s_per_step": round(runtime / ran, 3) if ran else None,
        "tokens_per_s": round(tokens / runtime, 1) if runtime and ran else None,
        "tokens_this_run": int(tokens),
        "processes": world,
        "threads_per_process": threads,
        "params_hash": params_hash(params),
    }


def train(
    params: DPOParams,
    model_dir: Path,
    dataset: Dataset,
    checkpoints: Path,
    fingerprint: str,
    threads: int,
    precision: Precision,
) -> tuple[Any, dict[str, Any]]:
    """Train (resuming this run's last checkpoint if any); return the trainer and the summary metrics.

    Every rank calls this; only the caller on the main process should write outputs.
    """
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    world = world_size()
    config = dpo_config(params, checkpoints, world, precision)
    state = PartialState()  # created by the config above: one process group per run
    if state.is_main_process:
        prepare_checkpoints(checkpoints, fingerprint)
    state.wait_for_everyone()
    resume = last_checkpoint(checkpoints)

    tokenizer = load_tokenizer(model_dir)
    # On GPUs with bf16 the frozen base weights live in bf16 (TRL autocasts, PEFT keeps the
    # adapter fp32); on CPU they stay fp32 and only the matmuls run in bf16 under autocast.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=precision.dtype)
    check_target_modules(model, params)
    trainer = LibraDPOTrainer(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(params),
        cpu_bf16=precision.autocast_bf16,
    )
    start_step = 0
    if resume:
        start_step = int(Path(resume).name.split("-")[-1])
        if state.is_main_process:
            print(f"dpo: resuming from {resume}")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    metrics["train_runtime"] = time.perf_counter() - start
    metrics["steps_this_run"] = trainer.state.global_step - start_step
    summary = summarise(trainer.state.log_history, metrics, params, world, threads)
    summary["precision"] = precision.record()
    return trainer, summary
