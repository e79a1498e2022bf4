"""The LLM client against the real embedded llama.cpp server, and faults from a real proxy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from libra.errors import LibraError
from libra.llm.cache import CallCache
from libra.llm.client import ChatRequest, open_client
from libra.llm.faultproxy import FaultProxy
from libra.llm.local import LOCAL_URL_ENV, free_port

from .conftest import ROOT, subprocess_env, tiny_params


class Colour(BaseModel):
    name: str
    hex_code: str


def ask(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)  # type: ignore[arg-type]


def test_completion_and_cache_hit(local_url: str, tmp_path: Path) -> None:
    params = tiny_params(tmp_path)
    usage1, usage2 = tmp_path / "u1.json", tmp_path / "u2.json"
    with open_client(params.llm, params.llm.generator, stage="t", usage_path=usage1) as client:
        [first] = client.run([ask("Name one noble gas.", max_tokens=16)])
    assert first.ok and first.text and not first.cached
    with open_client(params.llm, params.llm.generator, stage="t", usage_path=usage2) as client:
        [again] = client.run([ask("Name one noble gas.", max_tokens=16)])
    assert again.cached and again.text == first.text
    u1, u2 = json.loads(usage1.read_text()), json.loads(usage2.read_text())
    assert u1["requests"] == 1 and u1["completion_tokens"] > 0
    assert u2["requests"] == 0 and u2["cache_hits"] == 1


def test_structured_output_is_schema_valid(local_url: str, tmp_path: Path) -> None:
    params = tiny_params(tmp_path, llm={"generator": {"temperature": 0.0}})
    with open_client(params.llm, params.llm.generator, stage="t", usage_path=tmp_path / "u.json") as client:
        [res] = client.run([ask("Give a colour as JSON with keys name and hex_code.", schema=Colour, max_tokens=40)])
    assert res.ok, res.error
    assert set(res.parsed or {}) == {"name", "hex_code"}
    Colour.model_validate(res.parsed)


def test_sample_index_is_part_of_the_key(local_url: str, tmp_path: Path) -> None:
    params = tiny_params(tmp_path)
    with open_client(params.llm, params.llm.generator, stage="t", usage_path=tmp_path / "u.json") as client:
        client.run([ask("Say a word.", max_tokens=4, sample=i) for i in range(3)])
    assert CallCache(params.llm.cache_path).stats()["entries"] == 3


def test_faults_are_retried_and_no_row_is_lost(local_url: str, tmp_path: Path) -> None:
    params = tiny_params(tmp_path, llm={"generator": {"timeout_s": 1.5, "max_retries": 6, "concurrency": 2}})
    requests = [ask(f"Count to {i}.", max_tokens=8) for i in range(16)]
    with FaultProxy(local_url, fault_rate=0.3, stall_s=3.0, retry_after_s=0.1, seed=3) as proxy:
        import os

        os.environ[LOCAL_URL_ENV] = proxy.base_url
        try:
            with open_client(params.llm, params.llm.generator, stage="t", usage_path=tmp_path / "u.json") as client:
                results = client.run(requests)
        finally:
            os.environ[LOCAL_URL_ENV] = local_url
    assert len(results) == len(requests)
    assert all(r.ok or r.error for r in results)
    injected = {k: v for k, v in proxy.counts.items() if k in ("429", "500", "stall", "truncate")}
    assert set(injected) == {"429", "500", "stall", "truncate"}, proxy.counts
    usage = json.loads((tmp_path / "u.json").read_text())
    assert usage["retries"] >= sum(injected.values()) - usage["failures"] * 7
    assert usage["ok"] + usage["failures"] == len(requests)
    assert usage["ok"] >= 14


def test_retry_after_is_honoured_then_reported(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, llm={"generator": {"base_url": "http://x/v1", "api_key_env": "LIBRA_T_KEY", "max_retries": 2}})
    with FaultProxy(None, fault_rate=1.0, faults=("429",), retry_after_s=0.4) as proxy:
        role = params.llm.generator.model_copy(update={"base_url": proxy.base_url})
        import os

        os.environ["LIBRA_T_KEY"] = "k"
        start = time.perf_counter()
        with open_client(params.llm, role, stage="t", usage_path=tmp_path / "u.json") as client:
            [res] = client.run([ask("hi")])
        elapsed = time.perf_counter() - start
    assert not res.ok and res.error and res.error.startswith("rate_limited")
    assert elapsed >= 0.8  # two waits of Retry-After 0.4 s
    assert proxy.counts["requests"] == 3


def test_dead_endpoint_stops_the_batch_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBRA_T_KEY", "k")
    url = f"http://127.0.0.1:{free_port()}/v1"
    params = tiny_params(tmp_path, llm={"generator": {"base_url": url, "api_key_env": "LIBRA_T_KEY", "max_retries": 3}})
    with pytest.raises(LibraError, match="is unreachable: no call got an answer.*check base_url"):
        with open_client(params.llm, params.llm.generator, stage="t", usage_path=tmp_path / "u.json") as client:
            client.run([ask(f"q{i}") for i in range(6)])


def test_sentinel_key_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = "sk-SENTINEL-7f3a9c"
    monkeypatch.setenv("LIBRA_SENTINEL_KEY", sentinel)
    with FaultProxy(None) as proxy:
        params = tiny_params(tmp_path, llm={"generator": {"base_url": proxy.base_url, "api_key_env": "LIBRA_SENTINEL_KEY"}})
        with open_client(params.llm, params.llm.generator, stage="t", usage_path=tmp_path / "usage.json") as client:
            [res] = client.run([ask("hello")])
    assert res.ok
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert sentinel.encode() not in path.read_bytes(), path


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    from libra.config import parse_params
    from libra.llm.client import ChatRequest, open_client
    import yaml
    raw = yaml.safe_load(open(sys.argv[1]))
    params = parse_params(raw)
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=6) for i in range(int(sys.argv[2]))]
    with open_client(params.llm, params.llm.generator, stage="resume", usage_path=sys.argv[3]) as c:
        c.run(reqs)
    """
)


def test_resume_after_kill_repeats_no_completed_call(local_url: str, tmp_path: Path) -> None:
    n = 10
    params = tiny_params(tmp_path, llm={"generator": {"concurrency": 1}})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json")))
    script = tmp_path / "batch.py"
    script.write_text(RESUME_SCRIPT)
    with FaultProxy(local_url, latency_s=0.5) as proxy:
        env = subprocess_env(**{LOCAL_URL_ENV: proxy.base_url})
        proc = subprocess.Popen([sys.executable, str(script), str(params_file), str(n), str(tmp_path / "u1.json")], env=env, cwd=tmp_path)
        cache = CallCache(params.llm.cache_path)
        deadline = time.monotonic() + 120
        while cache.stats()["entries"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = cache.stats()["entries"]
        assert 3 <= done_before < n
        subprocess.run([sys.executable, str(script), str(params_file), str(n), str(tmp_path / "u2.json")], env=env, cwd=tmp_path, check=True)
    usage = json.loads((tmp_path / "u2.json").read_text())
    assert usage["cache_hits"] == done_before
    assert usage["requests"] == n - done_before
    assert cache.stats()["entries"] == n


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda raw: raw["llm"]["generator"].update(concurrency=0), "llm.generator.concurrency"),
        (lambda raw: raw.update(trainer={"lr": 1}), "'trainer'"),
        (lambda raw: raw["dpo"].update(beta="high"), "dpo.beta"),
        (lambda raw: raw["split"].update(strategy="by_task"), "split.strategy"),
    ],
)
def test_bad_params_exit_2_with_one_line(tmp_path: Path, edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "libra.cli", "--params", str(bad), "params"], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_cache_cli_stats_and_clear(local_url: str, tmp_path: Path) -> None:
    params = tiny_params(tmp_path)
    with open_client(params.llm, params.llm.generator, stage="cli", usage_path=tmp_path / "u.json") as client:
        client.run([ask("Say yes.", max_tokens=3)])
    pfile = tmp_path / "p.yaml"
    pfile.write_text(json.dumps(params.model_dump(mode="json")))
    run = lambda *a: subprocess.run([sys.executable, "-m", "libra.cli", "--params", str(pfile), "cache", *a], capture_output=True, text=True, env=subprocess_env(), check=True)  # noqa: E731
    stats = json.loads(run("stats").stdout)
    assert stats["entries"] == 1 and stats["by_stage"] == {"cli": 1}
    assert "removed 1" in run("clear").stdout
    assert json.loads(run("stats").stdout)["entries"] == 0


def test_llama_server_turns_extra_buffers_off_only_on_amx_cpus() -> None:
    """The AMX branch and the default branch, decided from injected CPU flags (not this machine's)."""
    from libra.llm.llama_server import EXTRA_BUFTS_ENV, use_extra_buffers

    avx2 = frozenset({"avx", "avx2", "fma", "f16c"})
    zen5 = avx2 | {"avx512f", "avx512_bf16", "avx512_vnni"}
    sapphire = zen5 | {"amx_bf16", "amx_tile", "amx_int8"}
    assert use_extra_buffers(avx2, {}) == (True, "llama.cpp default")
    assert use_extra_buffers(zen5, {})[0] is True
    on, why = use_extra_buffers(sapphire, {})
    assert on is False and "amx_bf16/amx_int8/amx_tile" in why and "20824" in why
    assert use_extra_buffers(sapphire, {EXTRA_BUFTS_ENV: "1"}) == (True, f"{EXTRA_BUFTS_ENV}=1")
    assert use_extra_buffers(avx2, {EXTRA_BUFTS_ENV: "0"})[0] is False
    with pytest.raises(ValueError, match=f"{EXTRA_BUFTS_ENV}='yes'.*1.*0"):
        use_extra_buffers(avx2, {EXTRA_BUFTS_ENV: "yes"})


def test_in_process_llama_takes_the_same_buffer_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """weights_kl and the bench build llama_cpp.Llama in-process; on AMX CPUs they crashed in decode (SIGSEGV)
    until they took the server's choice. Both branches forced by the env var, on any CPU."""
    import llama_cpp.llama_cpp as llama_lib

    from libra.llm.llama_server import EXTRA_BUFTS_ENV, choose_weight_buffers

    monkeypatch.setattr(llama_lib, "llama_model_default_params", llama_lib.llama_model_default_params)
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "1")
    assert choose_weight_buffers() is None
    assert llama_lib.llama_model_default_params().use_extra_bufts is True
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "0")
    assert choose_weight_buffers() == f"{EXTRA_BUFTS_ENV}=0"
    patched = llama_lib.llama_model_default_params
    assert patched().use_extra_bufts is False
    assert choose_weight_buffers() == f"{EXTRA_BUFTS_ENV}=0" and llama_lib.llama_model_default_params is patched  # not wrapped twice


def test_llama_server_with_plain_buffers_serves_a_completion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain-buffer branch (the one AMX CPUs take), forced, through the real server, on any CPU."""
    from openai import OpenAI

    from libra.config import LocalServer
    from libra.llm.llama_server import EXTRA_BUFTS_ENV
    from libra.llm.local import is_healthy, server_command

    monkeypatch.setenv(EXTRA_BUFTS_ENV, "0")
    port, log = free_port(), tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(server_command("smollm2-135m-instruct", port, LocalServer()), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not is_healthy(f"http://127.0.0.1:{port}/v1"):
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "server not healthy in 120 s"
            time.sleep(0.25)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=8, temperature=0.0,
                                               messages=[{"role": "user", "content": "Name one use of ethanol."}])  # fmt: skip
        assert (reply.choices[0].message.content or "").strip()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert f"llama.cpp extra weight buffers off ({EXTRA_BUFTS_ENV}=0)" in log.read_text(errors="replace")


def test_q8_0_copy_is_made_once_and_is_the_same_model(tmp_path: Path) -> None:
    from libra.llm.local import smollm2_gguf
    from libra.llm.weights import served_gguf
    from libra.llm.weights_kl import divergence

    shipped = smollm2_gguf()
    assert served_gguf(shipped, "shipped", tmp_path) == shipped
    copy = served_gguf(shipped, "q8_0", tmp_path)
    assert copy.parent == tmp_path and "q8_0" in copy.name and copy.stat().st_size > shipped.stat().st_size
    made = copy.stat().st_mtime_ns
    assert served_gguf(shipped, "q8_0", tmp_path) == copy and copy.stat().st_mtime_ns == made  # reused, not remade
    assert not list(tmp_path.glob("*.partial"))

    d = divergence(shipped, copy, "Ethanol is a colourless liquid that is widely used as a solvent and a fuel.", n_threads=2)
    assert d.kl < 0.05, d.kl  # measured 0.006 on 1,500 tokens; a 4-bit copy is at 0.33
    assert d.top1_agreement >= 0.8


def test_a_failed_conversion_names_the_param_and_leaves_no_file(tmp_path: Path) -> None:
    from libra.llm.weights import served_gguf

    not_a_gguf = tmp_path / "broken.gguf"
    not_a_gguf.write_bytes(b"not a model")
    with pytest.raises(LibraError, match=r"llm\.local\.weights: shipped") as info:
        served_gguf(not_a_gguf, "q8_0", tmp_path / "models")
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "models").glob("*"))


def test_each_weights_choice_has_its_own_cache_entries(tmp_path: Path) -> None:
    from libra.config import LocalServer
    from libra.llm.cache import call_key
    from libra.llm.local import local_endpoint_key

    from libra.llm.weights import CONVERSIONS, SHIPPED, WEIGHT_CHOICES

    assert sorted(WEIGHT_CHOICES) == sorted((SHIPPED, *CONVERSIONS))  # params.yaml offers exactly what weights.py can serve
    keys = {w: local_endpoint_key(LocalServer(weights=w)) for w in ("shipped", "q8_0")}
    assert keys == {"shipped": "local", "q8_0": "local:q8_0"}  # shipped keeps the keys of caches made before the choice existed
    common = dict(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0.7, max_tokens=8, seed=0, schema=None, sample=0)
    assert call_key(endpoint=keys["shipped"], **common) != call_key(endpoint=keys["q8_0"], **common)  # type: ignore[arg-type]


def test_request_i_goes_to_endpoint_i_mod_n(tmp_path: Path) -> None:
    from libra.llm.client import LLMClient

    params = tiny_params(tmp_path)
    with FaultProxy(None) as first, FaultProxy(None) as second:
        client = LLMClient(
            connect=lambda: [first.base_url, second.base_url], role=params.llm.generator, endpoint_key="local",
            api_key="sk-local-no-key", cache=CallCache(tmp_path / "c.sqlite"), stage="t",
        )  # fmt: skip
        results = client.run([ask(f"question {i}") for i in range(7)])
        assert [r.text for r in results] == [f"echo: question {i}" for i in range(7)]  # request order kept
        assert (first.counts["requests"], second.counts["requests"]) == (4, 3)


def test_two_local_servers_answer_every_call_the_same_way_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOCAL_URL_ENV, raising=False)  # start our own two, not the session's shared one
    monkeypatch.chdir(tmp_path)
    texts = []
    for run in range(2):
        params = tiny_params(tmp_path / f"run{run}", llm={"local": {"servers": 2, "n_threads": 1}})
        usage = tmp_path / f"u{run}.json"
        with open_client(params.llm, params.llm.generator, stage="t", usage_path=usage) as client:
            results = client.run([ask(f"Name a use of compound number {i}.", max_tokens=12) for i in range(6)])
        assert all(r.ok and not r.cached for r in results)
        texts.append([r.text for r in results])
        assert json.loads(usage.read_text())["calls"] == 6
    assert texts[0] == texts[1]  # sampled at temperature 0.7 with per-request seeds: the routing is fixed
    assert (tmp_path / ".libra" / "models").is_dir()  # the q8_0 copy, made in the project dir
