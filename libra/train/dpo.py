"""DPO with a LoRA adapter through TRL's DPOTrainer, fed by libra's precomputed inputs.

What libra changes around a stock `DPOTrainer`, and why (each measured in
bench/dpo_throughput.py):
- pairs arrive tokenised by `libra.train.encode` (the function the ref_logps stage used),
  with the reference log-probs as the `ref_chosen_logps` / `ref_rejected_logps` columns
  TRL reads when `precompute_ref_log_probs` is set: no reference forward per step;
- the reference is the adapter-disabled base model (PEFT, `ref_model=None`);
- a pair is one packed row `[prompt; chosen; rejected]` (`encode.pack_pairs`): the
  prompt, shared by both answers, goes through the model once per step, not twice; and
  the prefix every prompt shares (the chat template's system turn and user header, 24 tokens) goes
  through it once per batch, its keys and values seen by every row;
- only completion positions go through the 49k-vocabulary LM head, and the step skips
  TRL's full-vocabulary metrics (entropy, mean logits, token accuracy), not in the loss;
- precision comes from `libra.train.precision` (`compute.precision`): fp32 on CPUs
  without native bf16; on a native-bf16 CPU the step runs under
  `torch.autocast("cpu", bfloat16)`, with the frozen base's linear weights stored in bf16
  once (`precision.bf16_matmul_weights`: the same operands autocast would make at every
  call); the adapter, optimizer and loss stay fp32;
  on CUDA with bf16 the frozen base is bf16 (TRL's `bf16=True`);
- no gradient checkpointing (TRL's default): a 135M model's activations fit, and
  recomputing them costs a third more compute;
- batches are grouped by length (LengthBucketSampler), so little compute goes to padding;
- with `dpo.lora.first_layer` = k > 0 the adapter covers layers k and up, and the frozen
  layers below run once per pair, not at every step (`libra.train.frozen_layers`): their
  output is kept by the ref_logps stage's forward, or computed before training when that
  file was made for other pairs, layers or precision.
Every use of TRL internals lives in `libra.train.trl_compat` (checked before training).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
from datasets import Dataset
from trl import DPOConfig

from libra.config import DPOParams, params_hash
from libra.errors import InputError, ParamsError
from libra.io import sha256_file, write_json
from libra.train.encode import pack_pairs, packed_lengths, shared_prefix_length
from libra.train.frozen_layers import FrozenLayerStates
from libra.train.precision import Precision, bf16_matmul_weights
from libra.train.ref_logps import pair_and_token_logps
from libra.train.runtime import load_tokenizer, rank, world_size
from libra.train.trl_compat import PAIR_INDEX, REF_COLUMNS, PretokenizedDPOTrainer, check_trainer, check_trl, completion_positions_only
RUN_FILE = "libra_run.json"
# Params that change neither the trained adapter nor the data order: a checkpoint made
# under other values of these is still valid to resume from.
RESUME_NEUTRAL = ("num_threads", "save_steps")


class PackedPairCollator:
    """Batches of pre-tokenised pairs as `encode.pack_pairs` rows, plus the reference log-probs."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.prefix = 0  # the training prompts' shared prefix (encode.shared_prefix_length), set by the trainer
        self.frozen: FrozenLayerStates | None = None  # set by the trainer when dpo.lora.first_layer > 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pack_pairs(rows, self.pad_id, self.prefix)
        for col in REF_COLUMNS:
            batch[col] = torch.tensor([float(r[col]) for r in rows], dtype=torch.float32)
        if self.frozen is not None:
            batch["start_hidden"] = self.frozen.batch([int(r[PAIR_INDEX]) for r in rows], batch["input_ids"].shape[1])
            batch["first_layer"] = self.frozen.first_layer
            if self.prefix and self.frozen.prefix is not None:
                batch["prefix_hidden"] = self.frozen.prefix[None]
        return batch


class LibraDPOTrainer(PretokenizedDPOTrainer):
    """DPOTrainer on pre-tokenised pairs with precomputed reference log-probs, one forward per pair.

    The step (`compute_loss`) runs each pair as one packed row `[prompt; chosen; rejected]`
    (the prompt's forward and backward done once, not twice), scores only completion
    positions through the LM head, and computes TRL 1.16's losses (`sigmoid`, `hinge`,
    `ipo`, `robust`, `sft`, weighted by `loss_weights`, plus libra's `opening_weight`
    term, `opening_nll`) and its reward/log-prob metrics
    from the summed log-probs. It skips the metrics TRL computes over the full
    vocabulary at every completion position (entropy, mean logits, token accuracy),
    which are not part of the loss. Same loss and gradients as `DPOTrainer.compute_loss`
    (tests/test_train.py). `cpu_bf16` runs the step under CPU bfloat16 autocast.
    """

    def __init__(self, *args: Any, cpu_bf16: bool = False, opening: tuple[float, int] = (0.0, 4), first_layer: int = 0,
                 frozen_states: FrozenLayerStates | None = None, share_prefix: bool = True, **kwargs: Any) -> None:  # fmt: skip
        self._cpu_bf16 = cpu_bf16
        self._opening_weight, self._opening_tokens = opening
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = PackedPairCollator(kwargs["processing_class"].pad_token_id)
        dataset = kwargs.get("train_dataset")
        if first_layer > 0 and dataset is not None and PAIR_INDEX not in dataset.column_names:
            kwargs["train_dataset"] = dataset.add_column(PAIR_INDEX, list(range(dataset.num_rows)))
        super().__init__(*args, **kwargs)
        check_trainer(self)
        self._packed = isinstance(self.data_collator, PackedPairCollator)
        if cpu_bf16:  # after PEFT wrapped the model: the frozen base in bf16, LoRA in fp32
            bf16_matmul_weights(self.model)
        if self._packed and share_prefix and self.train_dataset is not None:
            self.data_collator.prefix = shared_prefix_length(list(self.train_dataset["prompt_ids"]))
        prefix = self.data_collator.prefix if self._packed else 0
        self.frozen_source = "none"
        if first_layer > 0 and self._packed and self.train_dataset is not None:
            if frozen_states is not None and frozen_states.first_layer == first_layer and frozen_states.prefix_tokens == prefix:
                self.data_collator.frozen, self.frozen_source = frozen_states, "ref_logps"
            else:
                self.data_collator.frozen, self.frozen_source = self._frozen_layer_states(first_layer), "computed"

    def _frozen_layer_states(self, first_layer: int) -> FrozenLayerStates:
        """Run the frozen decoder layers below `first_layer` once over every training pair."""
        columns = ("prompt_ids", "chosen_ids", "rejected_ids")
        rows = self.train_dataset.select_columns(list(columns)).to_list()
        states = FrozenLayerStates.compute(self.model, rows, self.processing_class.pad_token_id, first_layer,
                                           autocast_bf16=self._cpu_bf16, share_prefix=self.data_collator.prefix > 0)  # fmt: skip
        if self.accelerator.is_main_process:
            print(f"dpo: decoder layers 0-{first_layer - 1} are frozen: ran them once over {len(rows)} pairs "
                  f"in {states.seconds:.1f} s ({states.nbytes / 2**20:.0f} MiB of hidden states kept)", flush=True)  # fmt: skip
        return states

    def train_sampler(self, dataset: Any) -> torch.utils.data.Sampler[int] | None:
        if "length" not in dataset.column_names:
            return None
        return LengthBucketSampler(
            dataset["length"], self.args.per_device_train_batch_size, self.args.world_size,
            self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        if not self._packed or return_outputs:
            if self._opening_weight > 0:
                raise ParamsError("params: dpo.opening_weight > 0 needs libra's packed DPO step (PackedPairCollator)")
            with completion_positions_only():
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        logps, token_logps = pair_and_token_logps(model, inputs)
        chosen_logps, rejected_logps = logps[0::2], logps[1::2]
        ref_chosen, ref_rejected = inputs["ref_chosen_logps"].to(logps), inputs["ref_rejected_logps"].to(logps)
        chosen_logratios = chosen_logps - ref_chosen
        rejected_logratios = rejected_logps - ref_rejected
        delta = chosen_logratios - rejected_logratios
        seq = inputs["seq"].to(logps.device)
        lengths = torch.zeros(inputs["num_seqs"], device=logps.device).index_add(0, seq, torch.ones(seq.shape, device=logps.device))
        chosen_len, rejected_len = lengths[0::2], lengths[1::2]
        beta, smoothing = self.beta, self.label_smoothing
        logsigmoid = torch.nn.functional.logsigmoid
        loss = torch.zeros((), device=logps.device)
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sigmoid":
                per_pair = -logsigmoid(beta * delta)
            elif loss_type == "hinge":
                per_pair = torch.relu(1 - beta * delta)
            elif loss_type == "ipo":
                ipo_delta = chosen_logratios / chosen_len.clamp(min=1.0) - rejected_logratios / rejected_len.clamp(min=1.0)
                per_pair = (ipo_delta - 1 / (2 * beta)) ** 2
            elif loss_type == "robust":
                clean = -(1 - smoothing) * logsigmoid(beta * delta)
                flipped = -smoothing * logsigmoid(-beta * delta)
                per_pair = (clean - flipped) / (1 - 2 * smoothing)
            elif loss_type == "sft":  # TRL: cross-entropy over all chosen tokens of the batch (a token mean)
                per_pair = (-chosen_logps.sum() / chosen_len.sum()).expand(chosen_logps.shape[0])
            else:
                raise ParamsError(f"params: dpo.loss_type {loss_type!r} is not supported by libra's DPO step")
            loss = loss + per_pair.mean() * weight
        if self._opening_weight > 0:
            loss = loss + self._opening_weight * opening_nll(token_logps, inputs, self._opening_tokens)
        self._log_step_metrics(mode, inputs, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios)
        return loss

    def _log_step_metrics(self, mode: str, inputs: dict[str, Any], chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                          chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor) -> None:  # fmt: skip
        """TRL 1.16's names and definitions: rewards/*, logps/*, num_tokens (non-pad tokens of the unpacked rows)."""
        gather = self.accelerator.gather
        if mode == "train":
            tokens = torch.tensor(float(inputs["tokens"]), device=chosen_logps.device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
        metrics = self._metrics[mode]
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> contextlib.AbstractContextManager:
        if self._cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return super().autocast_smart_context_manager(cache_enabled)


def opening_nll(token_logps: torch.Tensor, packed: dict[str, Any], opening_tokens: int) -> torch.Tensor:
    """Mean negative log-prob of the first `opening_tokens` tokens of every chosen answer in a packed batch.

    Refusing or answering is decided by an answer's first tokens; the whole-answer `sft`
    term averages them with every later token, so a policy can fit its chosen refusals
    and still open with the base model's first word.
    """
    device = token_logps.device
    seq, offset = packed["seq"].to(device), packed["offset"].to(device)
    opening = (seq % 2 == 0) & (offset < opening_tokens)
    return -token_logps[opening].mean()


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


def lora_config(params: DPOParams, model: torch.nn.Module | None = None) -> Any:
    """PEFT's LoraConfig; `model` (the base model) is needed when `dpo.lora.first_layer` > 0.

    PEFT takes `layers_to_transform` with a list of module names only, so there
    `all-linear` becomes the names of the linear layers inside the decoder layers.
    """
    from peft import LoraConfig

    first = params.lora.first_layer
    targets: list[str] | str = params.lora.target_modules
    layers: list[int] | None = None
    if first > 0:
        num_layers = model.config.num_hidden_layers if model is not None else None
        if num_layers is None or first >= num_layers:
            raise ParamsError(
                f"params: dpo.lora.first_layer is {first}, but the base model has {num_layers} decoder layers; "
                f"use 0 (all layers) up to {(num_layers or 1) - 1}"
            )
        layers = list(range(first, num_layers))
        if targets == "all-linear":
            targets = sorted({
                name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"
            })  # fmt: skip
    return LoraConfig(
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=targets,
        layers_to_transform=layers,
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


def stored_frozen_states(
    path: str | None, first_layer: int, encoded: pl.DataFrame, precision: Precision
) -> FrozenLayerStates | None:
    """The ref_logps stage's states for these encoded pairs, or None (printing why, on rank 0) when the dpo stage
    must compute them. Every rank calls this and decides the same way."""
    def say(line: str) -> None:
        if rank() == 0:
            print(line, flush=True)

    if first_layer == 0 or not path:
        return None
    if not Path(path).is_file():
        say(f"dpo: {path} not found: running decoder layers 0-{first_layer - 1} here")
        return None
    states, meta = FrozenLayerStates.load(path)
    prefix = shared_prefix_length(encoded["prompt_ids"].to_list())
    lengths = packed_lengths(encoded, prefix)
    why = states.mismatch(meta, first_layer, encoded["pair_id"].to_list(), lengths, precision.states_key, prefix)
    if why:
        say(f"dpo: {path} was {why}: running decoder layers 0-{first_layer - 1} here")
        return None
    say(f"dpo: decoder layers 0-{first_layer - 1} are frozen: their output for {len(lengths)} pairs comes from "
        f"{path} ({states.nbytes / 2**20:.0f} MiB, kept by the ref_logps stage's forward)")  # fmt: skip
    return states


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


def run_fingerprint(params: DPOParams, world: int, model_dir: Path, inputs: list[Path]) -> str:
    """What a checkpoint belongs to: params that shape training, world size, base model and data."""
    shaping = {k: v for k, v in params.model_dump(mode="json").items() if k not in RESUME_NEUTRAL}
    base = [model_dir / n for n in ("config.json", "libra_source.json", "model.safetensors") if (model_dir / n).exists()]
    # The weights file is large; its size and the provenance record identify it well enough.
    digests = [sha256_file(p) if p.suffix != ".safetensors" else str(p.stat().st_size) for p in base + inputs]
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
    frozen_states: FrozenLayerStates | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train (resuming this run's last checkpoint if any); return the trainer and the summary metrics.

    `frozen_states`: the ref_logps stage's hidden states entering `dpo.lora.first_layer`
    for these pairs (checked by the caller, `FrozenLayerStates.mismatch`); None computes them.

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

    check_trl()
    tokenizer = load_tokenizer(model_dir)
    # On GPUs with bf16 the frozen base weights live in bf16 (TRL autocasts, PEFT keeps the
    # adapter fp32); on a native-bf16 CPU the trainer stores the frozen linear weights in bf16
    # after PEFT wraps the model and runs the step under autocast.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=precision.dtype)
    check_target_modules(model, params)
    trainer = LibraDPOTrainer(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(params, model),
        cpu_bf16=precision.autocast_bf16,
        opening=(params.opening_weight, params.opening_tokens),
        first_layer=params.lora.first_layer,
        frozen_states=frozen_states,
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
    frozen = trainer.data_collator.frozen
    summary["frozen_layers"] = {
        "first_layer": params.lora.first_layer, "source": trainer.frozen_source,
        "seconds": round(frozen.seconds, 2) if frozen is not None and trainer.frozen_source == "computed" else 0.0,
        "mib": round(frozen.nbytes / 2**20, 1) if frozen is not None else 0.0,
    }  # fmt: skip
    return trainer, summary
