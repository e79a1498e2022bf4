"""One client for every LLM call: cache, bounded concurrency, retries, validation, accounting.

    from libra.llm.client import ChatRequest, open_client
    with open_client(params.llm, params.llm.generator, stage="triplets") as client:
        results = client.run([ChatRequest(messages=[{"role": "user", "content": "Hi"}])])

A request never raises: it returns a ChatResult with `ok=False` and the reason. The one
exception is an endpoint that stops answering altogether (a dead server): the batch then
stops with a LibraError, and a rerun resumes from the cache.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai
from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from libra.config import LLMParams, LLMRole
from libra.errors import LibraError
from libra.io import write_json
from libra.llm.cache import CallCache, call_key
from libra.llm.local import local_endpoint_key, local_servers

USAGE_DIR = Path("metrics/usage")
LOCAL_API_KEY = "sk-local-no-key"
# After this many transport failures in a row with no success, the endpoint is treated as down.
DEAD_ENDPOINT_STREAK = 12


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    schema: type[BaseModel] | dict[str, Any] | None = None
    sample: int = 0
    max_tokens: int | None = None
    temperature: float | None = None
    # Keep a reasoning model's `reasoning_content` (or `reasoning`) as a leading <think> block of the text.
    keep_reasoning: bool = False


def with_reasoning(message: Any, text: str) -> str:
    """`text` with the message's reasoning trace (OpenAI-compatible `reasoning_content`) in front as <think>...</think>."""
    extra = getattr(message, "model_extra", None) or {}
    trace = extra.get("reasoning_content") or extra.get("reasoning") or getattr(message, "reasoning_content", None)
    return f"<think>{trace}</think>{text}" if isinstance(trace, str) and trace.strip() else text


@dataclass(frozen=True)
class ChatResult:
    ok: bool
    text: str | None
    parsed: dict[str, Any] | None
    error: str | None
    cached: bool


@dataclass
class Usage:
    stage: str
    model: str
    requests: int = 0
    cache_hits: int = 0
    calls: int = 0
    ok: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    def count_failure(self, reason: str) -> None:
        self.failures += 1
        kind = reason.split(":", 1)[0]
        self.failure_reasons[kind] = self.failure_reasons.get(kind, 0) + 1


def schema_dict(schema: type[BaseModel] | dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None or isinstance(schema, dict):
        return schema
    return schema.model_json_schema()


_GRAMMAR_HEAVY_KEYS = frozenset({"minLength", "maxLength", "pattern", "minItems", "maxItems"})


def grammar_safe(schema: Any) -> Any:
    """The schema without length/pattern bounds. llama.cpp unrolls maxLength into one grammar
    rule per character and segfaults past a few hundred; the reply is still validated against
    the full schema here."""
    if isinstance(schema, dict):
        return {k: grammar_safe(v) for k, v in schema.items() if k not in _GRAMMAR_HEAVY_KEYS}
    if isinstance(schema, list):
        return [grammar_safe(v) for v in schema]
    return schema


def response_format(schema: dict[str, Any], local: bool) -> dict[str, Any]:
    # llama.cpp's server takes a schema inside json_object and refuses json_schema (500);
    # OpenAI, vLLM and most others take the json_schema form.
    if local:
        return {"type": "json_object", "schema": grammar_safe(schema)}
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


def validate_reply(text: str, schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """Parse a structured reply; raise ValueError with a short reason when it does not fit."""
    try:
        data = json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid_json: {exc.msg} at char {exc.pos}") from None
    if isinstance(schema, dict):
        if not isinstance(data, dict):
            raise ValueError("schema_mismatch: reply is not a JSON object")
        missing = [k for k in schema.get("required", []) if k not in data]
        if missing:
            raise ValueError(f"schema_mismatch: missing keys {missing}")
        return data
    try:
        return schema.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"schema_mismatch: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _retry_after_s(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class _EndpointDown(Exception):
    pass


class LLMClient:
    def __init__(
        self, *, connect: Callable[[], list[str]], role: LLMRole, endpoint_key: str, api_key: str, cache: CallCache, stage: str
    ) -> None:
        self.role = role
        self._connect = connect
        self.base_urls: list[str] = []
        self.endpoint_key = endpoint_key
        self.cache = cache
        self.stage = stage
        self.usage = Usage(stage=stage, model=role.model)
        self._api_key = api_key
        self._transport_streak = 0
        self._answered = False  # has the endpoint ever sent back an HTTP response?

    def _key(self, req: ChatRequest, schema: dict[str, Any] | None) -> str:
        return call_key(
            model=self.role.model,
            endpoint=self.endpoint_key,
            messages=req.messages,
            temperature=self.role.temperature if req.temperature is None else req.temperature,
            max_tokens=req.max_tokens or self.role.max_tokens,
            seed=self.role.seed,
            schema=schema,
            sample=req.sample,
        )

    async def _call(self, api: openai.AsyncOpenAI, req: ChatRequest, sem: asyncio.Semaphore) -> ChatResult:
        schema = schema_dict(req.schema)
        key = self._key(req, schema)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.cache_hits += 1
            text = hit[0]
            parsed = validate_reply(text, req.schema) if req.schema is not None else None
            return ChatResult(ok=True, text=text, parsed=parsed, error=None, cached=True)

        kwargs: dict[str, Any] = {
            "model": self.role.model,
            "messages": req.messages,
            "temperature": self.role.temperature if req.temperature is None else req.temperature,
            "max_tokens": req.max_tokens or self.role.max_tokens,
        }
        if schema is not None:
            kwargs["response_format"] = response_format(schema, local=self.endpoint_key.startswith("local"))
        last_error = "no attempt made"
        for attempt in range(self.role.max_retries + 1):
            if attempt:
                self.usage.retries += 1
            # A different seed on retry, so a deterministic invalid reply is not repeated.
            kwargs["seed"] = self.role.seed + 1000 * req.sample + attempt
            delay: float | None = None
            async with sem:
                self.usage.requests += 1
                try:
                    resp = await api.chat.completions.create(**kwargs)
                except openai.RateLimitError as exc:
                    self._answered = True
                    last_error, delay = "rate_limited: 429", _retry_after_s(exc)
                except openai.APITimeoutError:
                    last_error = f"timeout: no reply within {self.role.timeout_s:.0f} s"
                except openai.APIConnectionError as exc:
                    last_error = f"connection: {exc.__cause__ or exc}"
                    self._transport_streak += 1
                    if self._transport_streak >= DEAD_ENDPOINT_STREAK:
                        raise _EndpointDown(last_error) from None
                except openai.APIStatusError as exc:
                    self._answered = True
                    last_error = f"http_{exc.status_code}: {str(exc.message)[:120]}"
                    if exc.status_code < 500 and exc.status_code not in (408, 409):
                        break  # a client error will not fix itself
                except (openai.APIError, json.JSONDecodeError, ValueError) as exc:
                    last_error = f"bad_response: {type(exc).__name__}: {str(exc)[:120]}"
                else:
                    self._transport_streak = 0
                    self._answered = True
                    text = (resp.choices[0].message.content or "") if resp.choices else ""
                    if req.keep_reasoning and resp.choices:
                        text = with_reasoning(resp.choices[0].message, text)
                    if resp.usage is not None:
                        self.usage.prompt_tokens += resp.usage.prompt_tokens
                        self.usage.completion_tokens += resp.usage.completion_tokens
                    try:
                        parsed = validate_reply(text, req.schema) if req.schema is not None else None
                    except ValueError as exc:
                        last_error = str(exc)
                    else:
                        if not text.strip():
                            last_error = "empty_reply: the model returned no text"
                        else:
                            p_tok = resp.usage.prompt_tokens if resp.usage else 0
                            c_tok = resp.usage.completion_tokens if resp.usage else 0
                            self.cache.put(key, model=self.role.model, stage=self.stage, reply=text,
                                           prompt_tokens=p_tok, completion_tokens=c_tok)  # fmt: skip
                            return ChatResult(ok=True, text=text, parsed=parsed, error=None, cached=False)
            if attempt < self.role.max_retries:
                backoff = min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())
                await asyncio.sleep(backoff if delay is None else max(delay, 0.05))
        self.usage.count_failure(last_error)
        return ChatResult(ok=False, text=None, parsed=None, error=last_error, cached=False)

    async def _run(self, requests: Sequence[ChatRequest], desc: str) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        # The endpoint (and the local servers) is only started when some call misses the cache.
        if not self.base_urls and any(self.cache.get(self._key(r, schema_dict(r.schema))) is None for r in requests):
            self.base_urls = self._connect()
        urls = self.base_urls or ["http://127.0.0.1:9/v1"]
        apis = [openai.AsyncOpenAI(base_url=u, api_key=self._api_key, timeout=self.role.timeout_s, max_retries=0) for u in urls]
        # Request i always goes to endpoint i mod n, and a semaphore serves its waiters in
        # order, so each embedded server sees the same requests in the same order every run.
        sems = [asyncio.Semaphore(self.role.concurrency) for _ in urls]

        async def one(i: int) -> None:
            results[i] = await self._call(apis[i % len(apis)], requests[i], sems[i % len(sems)])

        try:
            tasks = [asyncio.create_task(one(i)) for i in range(len(requests))]
            with tqdm(total=len(tasks), desc=desc, unit="call", disable=None) as bar:
                for fut in asyncio.as_completed(tasks):
                    try:
                        await fut
                    except _EndpointDown as exc:
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                        raise self._endpoint_down(requests, results, str(exc)) from None
                    bar.update(1)
        finally:
            for api in apis:
                await api.close()
        return [r for r in results if r is not None]

    @property
    def endpoint_url(self) -> str:
        return ", ".join(self.base_urls) or self.role.base_url

    def _endpoint_down(
        self, requests: Sequence[ChatRequest], results: list[ChatResult | None], reason: str
    ) -> LibraError:
        """Account for a batch cut short by a dead endpoint (every unfinished call is a failure)
        and say whether it never answered (a wrong base_url, a server not started) or stopped."""
        finished = [r for r in results if r is not None]
        self.usage.ok += sum(r.ok for r in finished)
        kind = "stopped_answering" if self._answered else "unreachable"
        for _ in range(len(requests) - len(finished)):
            self.usage.count_failure(f"{kind}: {reason}")
        if not self._answered:
            return LibraError(
                f"LLM endpoint {self.endpoint_url} is unreachable: no call got an answer ({reason}); check base_url "
                f"and that the server is running; {len(requests) - len(finished)} of {len(requests)} calls failed"
            )
        return LibraError(
            f"LLM endpoint {self.endpoint_url} stopped answering ({reason}); "
            f"{len(finished)} of {len(requests)} calls finished and are cached; rerun to resume"
        )

    def run(self, requests: Sequence[ChatRequest], desc: str = "llm") -> list[ChatResult]:
        """Run a batch; results are in request order."""
        start = time.perf_counter()
        self.usage.calls += len(requests)
        try:
            results = asyncio.run(self._run(requests, desc))
        finally:
            self.usage.wall_s += time.perf_counter() - start
        self.usage.ok += sum(r.ok for r in results)
        return results


def _api_key(role: LLMRole, local: bool) -> str:
    if local:
        return LOCAL_API_KEY
    key = os.environ.get(role.api_key_env)
    if not key:
        raise LibraError(f"environment variable {role.api_key_env} is not set; export it, or set api_key_env for this role in params.yaml")
    return key


def usage_file(stage: str, usage_path: str | os.PathLike[str] | None = None) -> Path:
    """Where a stage's usage goes: `usage_path` if given, else metrics/usage/<stage>.json."""
    return Path(usage_path) if usage_path is not None else USAGE_DIR / f"{stage}.json"


def write_usage(usage: Usage, path: str | os.PathLike[str]) -> None:
    write_json(asdict(usage), path)


@contextmanager
def open_client(
    llm: LLMParams, role: LLMRole, *, stage: str, usage_path: str | os.PathLike[str] | None = None
) -> Iterator[LLMClient]:
    """A client for one role; starts the embedded server when role.base_url is 'local'.

    Usage goes to `usage_path` (default metrics/usage/<stage>.json) when the block exits,
    also when it exits with an error, so partial runs are accounted for.
    """
    local = role.base_url == "local"
    cache = CallCache(llm.cache_path)
    api_key = _api_key(role, local)
    usage_out = usage_file(stage, usage_path)
    with ExitStack() as stack:

        def connect() -> list[str]:
            return stack.enter_context(local_servers(role.model, llm.local)) if local else [role.base_url]

        endpoint_key = local_endpoint_key(llm.local) if local else role.base_url
        client = LLMClient(connect=connect, role=role, endpoint_key=endpoint_key, api_key=api_key, cache=cache, stage=stage)
        try:
            yield client
        finally:
            write_usage(client.usage, usage_out)
            cache.close()
