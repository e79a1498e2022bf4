"""End to end: a real `dvc repro` of the whole pipeline on the tiny profile, then the
incremental reruns, an experiment sweep, and sharing through a DVC remote.

The project is copied into a temporary git repository; stages reuse the session's llama.cpp
server through $LIBRA_LOCAL_URL (a stage would otherwise start its own).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from libra.data.safety import rejected_answer_problem
from libra.llm.local import LOCAL_URL_ENV

from .conftest import ROOT, TINY_PROFILE, subprocess_env

pytestmark = pytest.mark.slow
MODELS, SUITES = ("base", "dpo", "base+gate"), ("in_domain", "xstest")
HAVE_XSTEST = any((ROOT.parent / "shared" / "xstest").glob("completions_*.csv"))


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ran_stages(output: str) -> list[str]:
    return sorted(set(re.findall(r"Running stage '([^']+)'", output)))


def make_project(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # DVC outputs committed by a real run (dvc.lock, metrics) are regenerated here.
    (dest / "dvc.lock").unlink(missing_ok=True)
    shutil.copy(TINY_PROFILE, dest / "params.yaml")
    # XSTest's completions lie beside the checkout, not in it: point the copy at them, or (on a
    # machine without them) at an empty folder, so the pipeline runs with raw rates only.
    xstest = ROOT.parent / "shared" / "xstest"
    if not HAVE_XSTEST:
        xstest = dest.parent / "no-xstest"
        xstest.mkdir(exist_ok=True)
    set_param(dest, "judge_validation.xstest_dir", str(xstest))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        sh(cmd, dest)
    return dest


def set_param(project: Path, dotted: str, value: object) -> None:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, local_url: str) -> Path:
    proj = make_project(tmp_path_factory.mktemp("libra"))
    start = time.perf_counter()
    out = sh(["dvc", "repro"], proj, subprocess_env(**{LOCAL_URL_ENV: local_url}))
    print(f"tiny-profile dvc repro: {time.perf_counter() - start:.1f} s; stages: {ran_stages(out.stdout)}")
    return proj


def test_full_repro_writes_every_output(project: Path) -> None:
    for rel in ("data/train.parquet", "data/test.parquet", "data/train_dpo.parquet", "data/README.md", "models/base",
                "models/dpo/adapter_config.json", "metrics/train.json", "metrics/judge/validation.json",
                "metrics/report.md", "metrics/summary.json"):  # fmt: skip
        assert (project / rel).exists(), rel
    for model in MODELS:
        for suite in SUITES:
            m = json.loads((project / f"metrics/eval/{model}/{suite}.json").read_text())
            for key in ("safety", "utility", "overall"):
                assert 0.0 <= m[key] <= 1.0, (model, suite, key)
            # judge-corrected rates need XSTest's human-labelled completions beside the checkout
            assert (m["corrected"] is not None) == HAVE_XSTEST, (model, suite, m["judge"])
    suite = pl.read_parquet(project / "data/suites/in_domain.parquet")
    assert set(suite["partition"]) == {"unseen_compound", "seen_compound", "robustness"}
    assert set(pl.read_parquet(project / "data/suites/xstest.parquet")["partition"]) == {"safe", "unsafe"}
    train_metrics = json.loads((project / "metrics/train.json").read_text())
    train_precision = train_metrics["precision"]
    assert train_precision["precision"] in ("fp32", "bf16") and train_precision["reason"]
    # dpo.lora.first_layer 1: the dpo stage took layer 0's output from the ref_logps stage's forward
    assert train_metrics["frozen_layers"]["source"] == "ref_logps" and train_metrics["frozen_layers"]["mib"] > 0
    shown = sh(["dvc", "metrics", "show", "--json"], project).stdout
    assert "safety" in shown and "utility" in shown
    report = (project / "metrics/report.md").read_text()
    assert "xstest" in report.lower() and "in_domain" in report and "| base+gate |" in report
    # base+gate: the gate stage's probe withheld some prompts with its refusal, and base answered the rest.
    gate = json.loads((project / "metrics/gate.json").read_text())
    assert str(gate["layer"]) in gate["train_cv_by_layer"] and gate["train_prompts"] > 0
    gated = pl.read_parquet(project / "data/answers/base+gate/in_domain.parquet")
    base = pl.read_parquet(project / "data/answers/base/in_domain.parquet")
    assert gated["prompt_id"].to_list() == base["prompt_id"].to_list() and gated["gated"].any()
    card = json.loads((project / "models/policies/base+gate.json").read_text())
    assert card["gate_sha256"] and card["scale"] == 0.0 and card["gate_threshold"] == 0.0 and card["gate_domain_threshold"] == 0.0
    # the chemistry scope: the domain probe was fitted, with the framed training pairs
    assert gate["domain_framed"] > 0 and gate["domain_cv"]["auc"] is not None


def test_data_outputs_are_safe_and_reconciled(project: Path) -> None:
    train, test = pl.read_parquet(project / "data/train.parquet"), pl.read_parquet(project / "data/test.parquet")
    assert not set(train["compound_id"]) & set(test["compound_id"])
    for df in (train, test, pl.read_parquet(project / "data/triplets.parquet")):
        for row in df.filter(pl.col("label") == "illegitimate").iter_rows(named=True):
            assert rejected_answer_problem(row["rejected"]) is None, row["rejected"]
    for stage in ("catalog", "triplets", "rephrase"):
        stats = json.loads((project / f"metrics/data/{stage}.json").read_text())
        assert stats["in"] == stats["out"] + stats["quarantined"], stage
        q = pl.read_parquet(project / f"data/quarantine/{stage}.parquet")
        assert q.height == stats["quarantined"] and q["reason"].null_count() == 0
    # The catalog lever trains on compounds outside the test split and the suite's unseen ones.
    train_dpo = pl.read_parquet(project / "data/train_dpo.parquet")
    catalog = set(train_dpo.filter(pl.col("source") == "catalog")["compound_id"].to_list())
    suite = pl.read_parquet(project / "data/suites/in_domain.parquet")
    unseen = set(suite.filter(pl.col("partition") != "seen_compound")["compound_id"].to_list())
    assert catalog and not catalog & (unseen | set(test["compound_id"].to_list()))
    # Task rewordings (augment.task_variants) are training prompts that no suite prompt repeats.
    reworded = set(train_dpo.filter(pl.col("source") == "reworded")["prompt"].to_list())
    assert reworded and not reworded & set(suite["prompt"].to_list())
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"train": str(project / "data/train.parquet")})
    assert ds["train"].num_rows == train.height


def test_noop_repro_runs_nothing(project: Path) -> None:
    start = time.perf_counter()
    out = sh(["dvc", "repro"], project)
    elapsed = time.perf_counter() - start
    assert ran_stages(out.stdout) == []
    print(f"no-op dvc repro: {elapsed:.2f} s")


def _repro_after(project: Path, local_url: str, dotted: str, value: object) -> list[str]:
    set_param(project, dotted, value)
    out = sh(["dvc", "repro"], project, subprocess_env(**{LOCAL_URL_ENV: local_url}))
    return ran_stages(out.stdout)


def test_judge_param_reruns_only_judge_score_report(project: Path, local_url: str) -> None:
    ran = _repro_after(project, local_url, "judge.fusion", "any_refusal")
    cells = [f"{m}-{s}" for m in MODELS for s in SUITES]
    judges = {"judge_validation", *(f"judge@{c}" for c in cells)}
    # score and report follow only where the verdicts or the judge's validation figures changed
    assert judges <= set(ran) <= judges | {"report", *(f"score@{c}" for c in cells)}, ran


def test_beta_reruns_dpo_and_what_follows_only(project: Path, local_url: str) -> None:
    ran = _repro_after(project, local_url, "dpo.beta", 0.2)
    # the base model's answers never rerun (their policy card does not change); judge/score/report
    # follow only if the new adapter changes the answers (2 tiny steps may not)
    answers = {f"answer@dpo-{s}" for s in SUITES}
    downstream = {f"{stage}@dpo-{s}" for stage in ("judge", "score") for s in SUITES} | {"report"}
    cards = {"policy@base", "policy@dpo", "policy@base+gate"}
    assert {"dpo", "policy@dpo"} | answers <= set(ran) <= {"dpo"} | cards | answers | downstream, ran
    assert not any(r.startswith(("answer@base", "judge@base", "score@base")) for r in ran), ran


def test_gate_threshold_reruns_only_the_gated_answers(project: Path, local_url: str) -> None:
    ran = _repro_after(project, local_url, "gate.threshold", 0.5)
    # the gate is not refitted; every card is rewritten (gate.threshold is a policy param), only base+gate's changes
    answers = {f"answer@base+gate-{s}" for s in SUITES}
    downstream = {f"{stage}@base+gate-{s}" for stage in ("judge", "score") for s in SUITES} | {"report"}
    assert {"policy@base+gate"} | answers <= set(ran) <= {"policy@base", "policy@dpo", "policy@base+gate"} | answers | downstream, ran


def test_rephrase_param_reruns_from_rephrase_with_no_repeated_llm_calls(project: Path, local_url: str) -> None:
    ran = _repro_after(project, local_url, "rephrase.max_pairs_per_seed", 1)
    assert "rephrase" in ran and "split" in ran
    # suites@xstest may rerun (it reads the split for its overlap stats) but writes the same table
    assert not {"catalog", "seeds", "triplets", "base_model", "classifier", "judge_validation"} & set(ran), ran
    usage = json.loads((project / "metrics/usage/rephrase.json").read_text())
    assert usage["requests"] == 0 and usage["cache_hits"] == usage["calls"], usage


def _commit(project: Path, message: str) -> None:
    sh(["git", "add", "-A"], project)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], project)


def test_sweep_through_the_dvc_queue(project: Path, local_url: str) -> None:
    _commit(project, "baseline")
    env = subprocess_env(**{LOCAL_URL_ENV: local_url})
    sh(["dvc", "exp", "run", "--queue", "-S", "dpo.beta=0.05,0.3"], project, env)
    sh(["dvc", "queue", "start", "-j", "1"], project, env)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], project, env).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    assert "Success" in status and "Failed" not in status, status
    table = sh(["dvc", "exp", "show", "--csv", "--no-fetch"], project, env).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    columns = set(rows[0])
    headline = [f"metrics/eval/dpo/{s}.json:{k}" for s in SUITES for k in ("safety", "utility", "overall")]
    assert {"dpo.beta", *headline} <= columns, columns
    swept = {r["dpo.beta"]: r for r in rows if r["State"] == "Success"}
    assert {"0.05", "0.3"} <= set(swept), table
    for beta in ("0.05", "0.3"):
        assert 0.0 <= float(swept[beta]["metrics/eval/dpo/in_domain.json:overall"]) <= 1.0
    keep = "Experiment|State|dpo.beta|metrics/eval.*:(safety|utility|overall)$"
    print(sh(["dvc", "exp", "show", "--md", "--no-fetch", "--drop", ".*", "--keep", keep], project, env).stdout)
    # libra frontier: one row per (experiment, model), the swept runs among them, and the plot.
    frontier = sh([sys.executable, "-m", "libra.cli", "frontier", "--plot", "metrics/experiments.png"], project, env).stdout
    dpo_rows = [line for line in frontier.splitlines() if line.startswith("| ") and "| dpo |" in line]
    assert len(dpo_rows) >= 3, frontier  # the workspace (or HEAD) and the two swept betas
    assert (project / "metrics/experiments.png").read_bytes()[:4] == b"\x89PNG"


def test_clone_pulls_from_remote_and_reruns_nothing(project: Path, tmp_path: Path, local_url: str) -> None:
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-d", "team", str(remote)], project)
    _commit(project, "remote")
    sh(["dvc", "push", "--run-cache"], project)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    sh(["dvc", "pull", "--run-cache"], clone)
    out = sh(["dvc", "repro"], clone)
    assert ran_stages(out.stdout) == [], out.stdout
    assert not (clone / ".libra/cache/llm.sqlite").exists()  # no LLM call was needed

    # Sharing the call cache: a teammate who changes a data param pays for no LLM call.
    shared = tmp_path / "llm-shared.sqlite"
    sh(["libra", "cache", "export", str(shared)], project)
    sh(["libra", "cache", "merge", str(shared)], clone)
    current = yaml.safe_load((clone / "params.yaml").read_text())["rephrase"]["max_pairs_per_seed"]
    set_param(clone, "rephrase.max_pairs_per_seed", current + 1)
    out = sh(["dvc", "repro", "rephrase"], clone, subprocess_env(**{LOCAL_URL_ENV: local_url}))
    assert "rephrase" in ran_stages(out.stdout), out.stdout
    usage = json.loads((clone / "metrics/usage/rephrase.json").read_text())
    # every paraphrase call the exporter made is a cache hit here: none is asked again
    assert usage["calls"] > 0 and usage["requests"] == 0 and usage["cache_hits"] == usage["calls"], usage
