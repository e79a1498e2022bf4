"""python stages/policy.py --model-name dpo~0.5 --adapter models/dpo --out models/policies/dpo~0.5.json

Write the policy card of one model of eval.models: what the answer stage will run for that
name. `base` is the base checkpoint alone; `dpo` is base + the DPO LoRA adapter; `dpo~0.5`
scales the adapter's delta by 0.5 (a point on the safety/utility frontier); an endpoint
name records its eval.endpoints entry; `<model>+gate` (base+gate, dpo+gate, ...) is that
local model behind the readout gate (libra/eval/gate.py) and records the gate's hash and
gate.threshold. The card holds the adapter's (and the gate's) content hash, so the answer
stage depends on the card, not on models/dpo or models/gate.joblib: retraining the adapter reruns the answers of
dpo and dpo~<lambda>, never those of base (whose card does not change), and refitting the
gate or moving gate.threshold reruns only the +gate models' answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from libra.config import ADAPTER_SCALE, load_params, split_gate
from libra.errors import InputError, ParamsError
from libra.io import sha256_file, write_json
from libra.stage import entrypoint


def adapter_digest(adapter: Path) -> dict[str, str]:
    files = sorted(p for p in adapter.glob("*") if p.is_file() and p.name != "libra_train.json")
    if not (adapter / "adapter_config.json").exists():
        raise InputError(f"{adapter} is not a PEFT adapter (no adapter_config.json); run `dvc repro dpo`")
    return {p.name: sha256_file(p) for p in files}


@entrypoint
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", required=True, help="a name of eval.models: base, dpo, dpo~<lambda>, any of these + '+gate', or an endpoint key")
    p.add_argument("--adapter", default="models/dpo", help="the DPO LoRA adapter dir (default: %(default)s)")
    p.add_argument("--gate", default="models/gate.joblib", help="the readout gate, used by +gate models (default: %(default)s)")
    p.add_argument("--out", required=True, help="policy card json to write")
    args = p.parse_args()
    params = load_params()
    cfg = params.eval
    if args.model_name not in cfg.models:
        raise ParamsError(f"--model-name {args.model_name!r} is not in eval.models {cfg.models}; add it there")
    name, gated = split_gate(args.model_name)

    if name == "base":
        card: dict[str, object] = {"model": name, "kind": "local", "adapter": None, "scale": 0.0}
    elif name == "dpo" or ADAPTER_SCALE.fullmatch(name):
        scale = 1.0 if name == "dpo" else float(name.split("~", 1)[1])
        card = {"model": name, "kind": "local", "adapter": str(args.adapter), "scale": scale,
                "adapter_sha256": adapter_digest(Path(args.adapter))}  # fmt: skip
    else:
        card = {"model": name, "kind": "endpoint", "endpoint": cfg.endpoints[name].model_dump(mode="json")}
    if gated:
        gate = Path(args.gate)
        if not gate.exists():
            raise InputError(f"{gate} does not exist; run `dvc repro gate` ({args.model_name} answers through the readout gate)")
        card |= {"model": args.model_name, "gate": str(gate), "gate_sha256": sha256_file(gate), "gate_threshold": params.gate.threshold,
                 "gate_domain_threshold": params.gate.domain_threshold}  # fmt: skip
    write_json(card, args.out)
    print(f"policy: {args.model_name} -> {args.out}")


if __name__ == "__main__":
    main()
