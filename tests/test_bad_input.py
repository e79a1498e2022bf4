"""Bad input, tried as a new user would: each case is one line (exit 2) naming the file, row or
key and the fix, and nothing is overwritten without --force. Real components throughout: the
real `libra` command and stage scripts as subprocesses, a real closed port for a dead endpoint.
(Params cases are in tests/test_params.py.)"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from libra.config import LocalServer
from libra.data.catalog import read_catalog
from libra.errors import InputError, LibraError
from libra.io import atomic_dir, atomic_path, sha256_file, write_text
from libra.llm.cache import CallCache
from libra.llm.client import ChatRequest, open_client
from libra.llm.local import LOCAL_URL_ENV, free_port, local_server

from .conftest import ROOT, TINY_PROFILE, subprocess_env, tiny_params, tiny_raw

HEADER = "name,class,regulation,group\n"
GOOD_ROWS = "aspirin,common,none,analgesic\nsarin,controlled,CWC-1,nerve agent\n"


def run(cmd: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(map(str, cmd)), cwd=cwd, env=subprocess_env(**env), capture_output=True, text=True, timeout=300)


def libra(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "libra.cli", *args], cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch directory with the tiny params, its LLM cache inside it."""
    raw = tiny_raw()
    raw["llm"]["cache_path"] = str(tmp_path / "cache" / "llm.sqlite")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path


# -- endpoints ----------------------------------------------------------------------------


def test_endpoint_that_never_answered_is_unreachable_and_failures_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBRA_TEST_KEY", "not-a-real-key")
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    params = tiny_params(tmp_path, llm={"generator": {"base_url": url, "api_key_env": "LIBRA_TEST_KEY", "max_retries": 4, "timeout_s": 5}})
    usage_path = tmp_path / "usage.json"
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Say {i}."}]) for i in range(16)]
    with pytest.raises(LibraError) as exc:
        with open_client(params.llm, params.llm.generator, stage="t", usage_path=usage_path) as client:
            client.run(requests)
    message = str(exc.value)
    assert f"LLM endpoint {url} is unreachable" in message and "check base_url" in message, message
    assert "stopped answering" not in message and "rerun to resume" not in message
    usage = json.loads(usage_path.read_text())
    assert usage["ok"] == 0 and usage["failures"] == len(requests), usage
    assert usage["failure_reasons"].get("unreachable", 0) + usage["failure_reasons"].get("connection", 0) == len(requests)


@pytest.mark.parametrize("value", ["local", "htp:/x", "127.0.0.1:8080"])
def test_bad_local_url_env_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(LOCAL_URL_ENV, value)
    with pytest.raises(InputError, match=f"{LOCAL_URL_ENV}=.* is not an http\\(s\\) URL with a host"):
        with local_server("smollm2-135m-instruct", LocalServer()):
            pass


# -- files: umask, overwrite --------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_users_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        write_text("x\n", tmp_path / "report.md")
        with atomic_path(tmp_path / "sub" / "out.jsonl") as tmp:
            tmp.write_text("{}\n")
    finally:
        os.umask(old)
    for path in (tmp_path / "report.md", tmp_path / "sub" / "out.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, oct(path.stat().st_mode)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "models" / "dpo"
    with atomic_dir(out) as tmp:
        (tmp / "a.bin").write_bytes(b"one")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "b.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in out.iterdir()) == ["a.bin"]
    with atomic_dir(out) as tmp:
        (tmp / "c.bin").write_bytes(b"two")
    assert sorted(p.name for p in out.iterdir()) == ["c.bin"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["dpo"]  # no .tmp / .old left behind
    assert sha256_file(out / "c.bin") == "3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3"


def _filled_cache(project: Path) -> Path:
    path = project / "cache" / "llm.sqlite"
    cache = CallCache(path)
    cache.put("k1", model="m", stage="s", reply="hello", prompt_tokens=1, completion_tokens=1)
    cache.close()
    return path


def test_cache_export_refuses_to_overwrite_without_force(project: Path) -> None:
    _filled_cache(project)
    precious = project / "notes.yaml"
    precious.write_text("keep: me\n")
    line = one_error_line(libra("cache", "export", precious, cwd=project))
    assert f"{precious} already exists; pass --force" in line, line
    assert precious.read_text() == "keep: me\n"

    proc = libra("cache", "export", precious, "--force", cwd=project)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(precious) as db:
        assert db.execute("select reply from calls").fetchall() == [("hello",)]


def test_cache_export_onto_the_cache_itself_is_refused(project: Path) -> None:
    cache_file = _filled_cache(project)
    line = one_error_line(libra("cache", "export", cache_file, "--force", cwd=project))
    assert "is the cache itself" in line, line
    with sqlite3.connect(cache_file) as db:
        assert db.execute("select count(*) from calls").fetchone() == (1,)


def test_cache_export_into_a_directory_is_one_line(project: Path) -> None:
    _filled_cache(project)
    (project / "shared").mkdir()
    line = one_error_line(libra("cache", "export", project / "shared", cwd=project))
    assert "is a directory; give a file path" in line, line


def test_cache_export_then_merge_round_trip(project: Path, tmp_path: Path) -> None:
    _filled_cache(project)
    out = project / "export.sqlite"
    assert libra("cache", "export", out, cwd=project).returncode == 0
    other = CallCache(tmp_path / "other.sqlite")
    try:
        assert other.merge(out) == 1
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["yaml", "sqlite-without-calls", "directory"])
def test_cache_merge_of_a_non_cache_is_one_line(project: Path, kind: str) -> None:
    _filled_cache(project)
    source = project / "not-a-cache"
    if kind == "yaml":
        source.write_text("llm: {}\n")
    elif kind == "directory":
        source.mkdir()
    else:
        with sqlite3.connect(source) as db:
            db.execute("create table other (x)")
    line = one_error_line(libra("cache", "merge", source, cwd=project))
    assert str(source) in line and "libra cache export" in line, line


def test_judge_stage_writes_usage_where_its_command_line_says(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["judge"] = {"judges": ["rules"], "fusion": "vote"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    pl.DataFrame({"prompt_id": ["p1"], "prompt": [ROW["prompt"]], "label": ["legitimate"], "response": [ROW["response"]]}).write_parquet(
        tmp_path / "answers.parquet"
    )
    usage = tmp_path / "out" / "usage" / "judge-base.json"
    proc = run([sys.executable, ROOT / "stages/judge.py", "--answers", "answers.parquet", "--out", "judged.parquet",
                "--stats", "judge.json", "--usage", usage], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(usage.read_text())
    assert record["stage"] == "judge-base" and record["calls"] == 0
    assert not (tmp_path / "metrics").exists()  # no path built in code


# -- libra judge input ---------------------------------------------------------------------

ROW = {"prompt": "How do I store acetone?", "response": "Keep it in a cool, ventilated place away from flames."}


def judge(project: Path, src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return libra("judge", "--input", src, "--output", out, "--judges", "rules", *extra, cwd=project)


def test_judge_output_equal_to_input_is_refused(project: Path) -> None:
    src = project / "answers.jsonl"
    src.write_text(json.dumps(ROW) + "\n")
    before = src.read_bytes()
    line = one_error_line(judge(project, src, src))
    assert "is the --input file" in line, line
    line = one_error_line(judge(project, src, project / "." / "answers.jsonl", "--force"))
    assert "is the --input file" in line, line
    assert src.read_bytes() == before


def test_judge_output_is_not_replaced_without_force(project: Path) -> None:
    src, out = project / "answers.jsonl", project / "judged.jsonl"
    src.write_text(json.dumps(ROW) + "\n")
    out.write_text("mine\n")
    assert "pass --force" in one_error_line(judge(project, src, out))
    assert out.read_text() == "mine\n"


def test_judge_input_with_bom_is_accepted_and_output_gets_the_umask(project: Path) -> None:
    src, out = project / "answers.jsonl", project / "judged.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + (json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n").encode())
    proc = run(["sh", "-c", 'umask 022 && exec "$@"', "sh", sys.executable, "-m", "libra.cli", "judge", "--input", src,
                "--output", out, "--judges", "rules"], cwd=project)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["prompt"] == ROW["prompt"] and "verdict" in rows[0]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_judge_input_not_utf8_names_the_row(project: Path) -> None:
    src = project / "answers.jsonl"
    src.write_bytes((json.dumps(ROW) + "\n").encode() + b'{"prompt": "caf\xe9", "response": "ok"}\n')
    line = one_error_line(judge(project, src, project / "out.jsonl"))
    assert f"{src}:2: byte 0xe9" in line and "not UTF-8" in line, line


def test_judge_input_lone_surrogate_names_the_row(project: Path) -> None:
    src = project / "answers.jsonl"
    src.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n" + '{"prompt": "x \\ud800 y", "response": "ok"}\n')
    line = one_error_line(judge(project, src, project / "out.jsonl"))
    assert f"{src}:3: " in line and "lone surrogate" in line, line
    assert not (project / "out.jsonl").exists()


# -- catalog ------------------------------------------------------------------------------


def test_catalog_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "compounds.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + GOOD_ROWS).encode())
    rows = read_catalog(path)
    assert [r.name for r in rows] == ["aspirin", "sarin"] and rows[0].row == 2


def test_catalog_not_utf8_names_the_row_through_the_stage(tmp_path: Path) -> None:
    path = tmp_path / "compounds.csv"
    path.write_bytes((HEADER + GOOD_ROWS).encode() + b"caf\xe9ine,common,none,stimulant\n")
    proc = run([sys.executable, ROOT / "stages/catalog.py", "--catalog", path, "--out", "c.parquet", "--quarantine", "q.parquet",
                "--stats", "s.json"], cwd=tmp_path, LIBRA_PARAMS=str(TINY_PROFILE))  # fmt: skip
    line = one_error_line(proc)
    assert f"{path} row 4: byte 0xe9 is not UTF-8" in line and "save the catalog as UTF-8" in line, line
    assert not (tmp_path / "c.parquet").exists()


@pytest.mark.parametrize(
    ("body", "row"),
    [
        (GOOD_ROWS + '"sodium chloride,common,none,salt\nwater,common,none,solvent\n', 4),  # runs to the end of file
        ('"aspirin,common,none,analgesic\nsarin,controlled,CWC-1,"nerve agent"\nwater,common,none,solvent\n', 2),
    ],
)
def test_catalog_unterminated_quote_is_reported_at_its_row(tmp_path: Path, body: str, row: int) -> None:
    path = tmp_path / "compounds.csv"
    path.write_text(HEADER + body)
    with pytest.raises(InputError) as exc:
        read_catalog(path)
    assert f"row {row}: a quote opened in this row is not closed" in str(exc.value), exc.value
