"""Faults survived at stage level: each test runs a real stage script as a subprocess, in a
scratch project, against the real llama.cpp server (directly, through the fault proxy, or
one the stage starts itself and that is then killed).

The LLM stage used is `triplets` (the generator role, schema-free and structured calls);
`seeds` is the quick non-LLM stage used for the disk faults.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

from libra.llm.faultproxy import FaultProxy
from libra.llm.local import LOCAL_URL_ENV

from .conftest import ROOT, _merge, subprocess_env, tiny_raw

pytestmark = pytest.mark.slow

TRIPLETS = ["stages/triplets.py", "--seeds", "data/seeds.parquet", "--out", "data/triplets.parquet",
            "--quarantine", "data/quarantine/triplets.parquet", "--stats", "metrics/data/triplets.json"]  # fmt: skip
SEEDS = ["stages/seeds.py", "--compounds", "data/compounds.parquet", "--out", "data/seeds.parquet",
         "--quarantine", "data/quarantine/seeds.parquet", "--stats", "metrics/data/seeds.json"]  # fmt: skip
CATALOG = ["stages/catalog.py", "--catalog", str(ROOT / "data/catalog/compounds.csv"), "--out", "data/compounds.parquet",
           "--quarantine", "data/quarantine/catalog.parquet", "--stats", "metrics/data/catalog.json"]  # fmt: skip
SENTINEL = "sk-SENTINEL-4b1d0e"


def stage_cmd(args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / args[0]), *args[1:]]


def write_params(project: Path, **overrides: dict) -> None:
    raw = tiny_raw()
    raw["seeds"]["n_illegitimate"] = 6  # 12 seeds: enough calls to interrupt mid-stage
    for section, values in overrides.items():
        _merge(raw.setdefault(section, {}), values)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project holding the catalog and seeds outputs (no LLM involved)."""
    project = tmp_path_factory.mktemp("seeded")
    write_params(project)
    for args in (CATALOG, SEEDS):
        subprocess.run(stage_cmd(args), cwd=project, env=subprocess_env(), check=True, capture_output=True)
    return project


@pytest.fixture
def project(seeded: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "project"
    shutil.copytree(seeded, dest)
    return dest


def run_stage(project: Path, args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(stage_cmd(args), cwd=project, env=env, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def cached_calls(project: Path) -> int:
    db = project / ".libra/cache/llm.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from calls").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"stage finished before the fault could be injected: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the stage to make progress"
        time.sleep(0.1)


def usage(project: Path) -> dict:
    return json.loads((project / "metrics/usage/triplets.json").read_text())


def assert_reconciled(project: Path) -> dict:
    stats = json.loads((project / "metrics/data/triplets.json").read_text())
    quarantine = pl.read_parquet(project / "data/quarantine/triplets.parquet")
    assert stats["in"] == pl.read_parquet(project / "data/seeds.parquet").height
    assert stats["in"] == stats["out"] + stats["quarantined"], stats
    assert quarantine.height == stats["quarantined"]
    assert quarantine["reason"].null_count() == 0 and all(quarantine["reason"].str.len_chars() > 0)
    return stats


def no_temp_files(project: Path) -> list[Path]:
    return list((project / "data").rglob("*.tmp"))


def test_generator_with_30pct_faults_completes_and_reconciles(project: Path, local_url: str) -> None:
    write_params(project, llm={"generator": {"timeout_s": 3, "max_retries": 6}})
    with FaultProxy(local_url, fault_rate=0.3, stall_s=5.0, retry_after_s=0.1, seed=15) as proxy:
        proc = run_stage(project, TRIPLETS, subprocess_env(**{LOCAL_URL_ENV: proxy.base_url}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    injected = {k: proxy.counts[k] for k in ("429", "500", "stall", "truncate")}
    # the faults really happened, of several kinds (tests/test_llm.py covers each kind)
    assert sum(injected.values()) >= 3 and sum(v > 0 for v in injected.values()) >= 3, proxy.counts
    stats = assert_reconciled(project)
    u = usage(project)
    assert u["retries"] >= 1, u
    print(f"30% faults: injected {injected} over {proxy.counts['requests']} requests; "
          f"in={stats['in']} out={stats['out']} quarantined={stats['quarantined']}; retries={u['retries']}")  # fmt: skip


def test_killed_stage_leaves_no_partial_output_and_resumes(project: Path, local_url: str) -> None:
    env = subprocess_env(**{LOCAL_URL_ENV: local_url})
    write_params(project, llm={"generator": {"concurrency": 1}})
    proc = subprocess.Popen(stage_cmd(TRIPLETS), cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: cached_calls(project) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before_kill = cached_calls(project)
    assert not (project / "data/triplets.parquet").exists() and not no_temp_files(project)

    rerun = run_stage(project, TRIPLETS, env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    u = usage(project)
    assert u["cache_hits"] >= done_before_kill, u
    assert u["requests"] - u["retries"] == u["calls"] - u["cache_hits"], u  # no completed call was asked again
    assert_reconciled(project)
    print(f"SIGKILL mid-stage: {done_before_kill} calls done before the kill; rerun: {u['cache_hits']} cache hits, "
          f"{u['requests']} requests for {u['calls']} calls")  # fmt: skip


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_local_server_dying_mid_stage_is_reported_and_the_rerun_resumes(project: Path, local_url: str) -> None:
    env = {k: v for k, v in subprocess_env().items() if k != LOCAL_URL_ENV}  # the stage starts its own server
    write_params(project, llm={"generator": {"concurrency": 1, "max_retries": 2}})
    proc = subprocess.Popen(stage_cmd(TRIPLETS), cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: cached_calls(project) >= 2, proc)
    [server] = _children(proc.pid)
    os.kill(server, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    done_before = cached_calls(project)
    assert proc.returncode == 1, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "stopped answering" in last and "rerun to resume" in last and "are cached" in last, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not (project / "data/triplets.parquet").exists() and not no_temp_files(project)

    rerun = run_stage(project, TRIPLETS, subprocess_env(**{LOCAL_URL_ENV: local_url}))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    u = usage(project)
    assert u["cache_hits"] >= done_before >= 2, u
    assert_reconciled(project)
    print(f"server killed mid-stage: {last!r}; rerun: {u['cache_hits']} cache hits of {u['calls']} calls")


def test_unwritable_output_directory_fails_with_one_clear_line(project: Path) -> None:
    (project / "blocked").write_text("a file where a directory should be")
    args = [a.replace("data/seeds.parquet", "blocked/seeds.parquet") for a in SEEDS]
    proc = run_stage(project, args, subprocess_env())
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot create directory blocked") and "permissions" in line, proc.stderr


def test_full_disk_fails_with_one_clear_line_and_no_partial_file(project: Path) -> None:
    # RLIMIT_FSIZE makes every write past 256 bytes fail (EFBIG), as a full disk would (ENOSPC).
    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

    (project / "data/seeds.parquet").unlink()
    proc = subprocess.run(stage_cmd(SEEDS), cwd=project, env=subprocess_env(), capture_output=True, text=True, preexec_fn=limit_file_size)
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot write data/seeds.parquet") and "free space" in line, proc.stderr
    assert not (project / "data/seeds.parquet").exists() and not no_temp_files(project)


def test_sentinel_api_key_is_in_no_artefact(project: Path, local_url: str) -> None:
    """A hosted-endpoint configuration (a real key sent over HTTP) leaves the key nowhere."""
    write_params(project, llm={"generator": {"base_url": f"{local_url}", "api_key_env": "LIBRA_TEST_KEY"}})
    env = subprocess_env(LIBRA_TEST_KEY=SENTINEL)
    env.pop(LOCAL_URL_ENV, None)
    proc = run_stage(project, TRIPLETS, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert SENTINEL not in proc.stdout + proc.stderr
    scanned = 0
    for path in project.rglob("*"):
        if path.is_file():
            scanned += 1
            assert SENTINEL.encode() not in path.read_bytes(), path
    assert scanned >= 8 and (project / ".libra/cache/llm.sqlite").exists()
