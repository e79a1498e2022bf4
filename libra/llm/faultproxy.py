"""A loopback HTTP proxy that injects faults in front of an OpenAI-compatible server.

Used by tests and benchmarks to exercise the client against real failure modes:

    with FaultProxy(upstream="http://127.0.0.1:8080", fault_rate=0.3) as proxy:
        ...  # point base_url at proxy.base_url

Faults: `429` (with Retry-After), `500`, `stall` (no reply past the client's timeout),
`truncate` (a 200 whose JSON body is cut short). `latency_s` delays every request.
With `upstream=None` it answers every chat completion itself with a canned reply, which
makes a fast, deterministic endpoint for client benchmarks.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "stall", "truncate")


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 refuses connections under concurrency
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out on a stall has hung up before the reply: that is the fault
        # working, not an error to print a traceback for.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def canned_completion(body: dict[str, Any]) -> dict[str, Any]:
    last = body.get("messages", [{}])[-1].get("content", "")
    return {
        "id": "chatcmpl-proxy",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "proxy"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {str(last)[:40]}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


class FaultProxy:
    def __init__(
        self,
        upstream: str | None,  # e.g. http://127.0.0.1:8080/v1, or None for canned replies
        *,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        latency_s: float = 0.0,
        stall_s: float = 5.0,
        retry_after_s: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.fault_rate = fault_rate
        self.faults = faults
        self.latency_s = latency_s
        self.stall_s = stall_s
        self.retry_after_s = retry_after_s
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _pick_fault(self) -> str | None:
        with self._lock:
            if self._rng.random() < self.fault_rate:
                return self._rng.choice(self.faults)
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str, body: bytes | None) -> tuple[int, bytes]:
                # upstream is a base URL ending in /v1, like the client's base_url
                url = f"{proxy.upstream}{self.path.removeprefix('/v1')}"
                req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=300) as resp:
                        return resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read()

            def do_GET(self) -> None:  # noqa: N802
                if proxy.upstream is None:
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "proxy", "object": "model"}]}).encode())
                    return
                status, data = self._forward("GET", None)
                self._send(status, data)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if proxy.latency_s:
                    time.sleep(proxy.latency_s)
                fault = proxy._pick_fault()
                with proxy._lock:
                    proxy.counts["requests"] += 1
                    proxy.counts[fault or "ok"] += 1
                if fault == "429":
                    self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": str(proxy.retry_after_s)})
                    return
                if fault == "500":
                    self._send(500, b'{"error": {"message": "injected server error"}}')
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                    self.close_connection = True
                    return
                if proxy.upstream is None:
                    status, data = 200, json.dumps(canned_completion(json.loads(body or b"{}"))).encode()
                else:
                    status, data = self._forward("POST", body)
                if fault == "truncate" and status == 200:
                    data = data[: max(1, len(data) // 2)]
                self._send(status, data)

        return Handler


def main() -> None:
    """Run a proxy in its own process: `python -m libra.llm.faultproxy --latency 0.2`."""
    import argparse

    parser = argparse.ArgumentParser(description="libra fault-injecting proxy (canned replies without --upstream)")
    parser.add_argument("--upstream", default=None, help="base URL to forward to, ending in /v1 (default: canned replies)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests given a fault")
    args = parser.parse_args()
    with FaultProxy(args.upstream, latency_s=args.latency, fault_rate=args.fault_rate) as proxy:
        print(proxy.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
