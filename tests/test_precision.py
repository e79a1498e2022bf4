"""Precision by capability: every branch, with the capability and the matmul rates injected."""

from __future__ import annotations

from libra.train.precision import Capability, choose_precision, read_cpu_flags

AVX2 = Capability(cuda=False, cuda_bf16=False, cpu_flags=frozenset({"avx2", "fma"}), torch_cpu_capability="AVX2")
AMX = Capability(cuda=False, cuda_bf16=False, cpu_flags=frozenset({"avx512f", "avx512_bf16", "amx_bf16"}),
                 torch_cpu_capability="AVX512")  # fmt: skip
EMULATED = {"float32": 132.0, "bfloat16": 0.9}
NATIVE = {"float32": 190.0, "bfloat16": 415.0}


def test_avx2_cpu_auto_is_fp32_and_never_bf16() -> None:
    p = choose_precision("auto", AVX2, measure=lambda: EMULATED)
    assert (p.precision, p.dtype, p.autocast_bf16, p.device) == ("fp32", "float32", False, "cpu")
    assert "no avx512_bf16" in p.reason and "0.9" in p.reason
    assert p.record()["cpu_capability"] == "AVX2"


def test_native_bf16_cpu_auto_autocasts() -> None:
    p = choose_precision("auto", AMX, measure=lambda: NATIVE)
    assert (p.precision, p.dtype, p.autocast_bf16) == ("bf16", "float32", True)
    assert "native bf16" in p.reason


def test_flags_that_lie_are_caught_by_the_microbenchmark() -> None:
    p = choose_precision("auto", AMX, measure=lambda: EMULATED)
    assert p.precision == "fp32" and "slow" in p.reason


def test_forced_bf16_on_avx2_warns_once_with_the_slowdown() -> None:
    lines: list[str] = []
    p = choose_precision("bf16", AVX2, measure=lambda: EMULATED, warn=lines.append)
    assert p.autocast_bf16 and p.precision == "bf16"
    assert len(lines) == 1 and "147x slower" in lines[0] and "compute.precision" in lines[0]


def test_fp32_requested_skips_the_benchmark() -> None:
    def boom() -> dict[str, float]:
        raise AssertionError("no benchmark needed for fp32")

    assert choose_precision("fp32", AMX, measure=boom).precision == "fp32"


def test_cuda_branches() -> None:
    def boom() -> dict[str, float]:
        raise AssertionError("no CPU benchmark on CUDA")

    gpu = Capability(cuda=True, cuda_bf16=True)
    old_gpu = Capability(cuda=True, cuda_bf16=False)
    assert choose_precision("auto", gpu, measure=boom).dtype == "bfloat16"
    assert choose_precision("fp32", gpu, measure=boom).dtype == "float32"
    lines: list[str] = []
    assert choose_precision("bf16", old_gpu, measure=boom, warn=lines.append).dtype == "float32" and lines


def test_real_machine_detection_runs(tmp_path) -> None:  # noqa: ANN001
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags\t\t: fpu avx2 amx_bf16\n")
    assert "amx_bf16" in read_cpu_flags(cpuinfo)
    p = choose_precision("auto")  # this machine, whatever it is: a valid decision, measured
    assert p.precision in ("bf16", "fp32")
    assert p.device == "cuda" or (p.matmul_gflops is not None and p.matmul_gflops["float32"] > 0)


def test_bf16_matmul_weights_give_the_same_logits_as_autocast_over_fp32_weights(tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    """Cast once, the frozen linear weights are the operands autocast made at every call: bit-identical logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from libra.train.precision import bf16_matmul_weights

    base, adapter = tiny_dirs
    ids = torch.tensor([[1, 17, 230, 4051, 99, 2, 8, 310]])
    # SmolLM2 ties its LM head to the input embedding; so does this tiny model.
    config = AutoConfig.from_pretrained(base, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.lm_head.weight is model.get_input_embeddings().weight
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(ids).logits
    n = bf16_matmul_weights(model.requires_grad_(False))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(ids).logits
    assert n == 2 * 7 + 1  # 7 projections per layer and the LM head
    assert torch.equal(before, after)
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.get_input_embeddings().weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for name, p in model.named_parameters() if "norm" in name)

    # A trainable weight (LoRA's, under PEFT) keeps its fp32 master copy.
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter, is_trainable=True)
    bf16_matmul_weights(peft)
    lora = [p for name, p in peft.named_parameters() if "lora_" in name]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)
    frozen = [m.base_layer.weight for m in peft.modules() if hasattr(m, "base_layer") and hasattr(m.base_layer, "weight")]
    assert frozen and all(w.dtype == torch.bfloat16 for w in frozen)


def test_a_model_loaded_for_bf16_autocast_refuses_to_generate_without_it(tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    """load_policy with a native-bf16 precision casts the weights; generating without that precision is one clear error."""
    import pytest
    import torch

    from libra.errors import LibraError
    from libra.eval.answer import generate, load_policy

    base, _ = tiny_dirs
    native = choose_precision("auto", AMX, measure=lambda: NATIVE)
    model, tok = load_policy(base, precision=native)
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    with pytest.raises(LibraError, match="pass the same precision to generate"):
        generate(model, tok, ["Hi"], batch_size=1, max_new_tokens=2, progress=False)
    assert len(generate(model, tok, ["Hi"], batch_size=1, max_new_tokens=2, progress=False, precision=native)) == 1
