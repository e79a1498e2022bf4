"""Content-addressed LLM call cache in one SQLite file, shared by stages and processes.

The key hashes everything that determines a reply (model, normalised endpoint, messages,
sampling params, schema, sample index) and nothing else: no API key, no port, no attempt
number. Only valid replies are stored, so errors are never cached and a rerun resumes
exactly where a killed run stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from libra.errors import InputError, LibraError
from libra.io import atomic_path

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    stage TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def normalise_endpoint(base_url: str) -> str:
    """'local' and 'local:<weights>' stay as they are (the port changes per run); URLs lose case and trailing '/'."""
    if base_url == "local" or base_url.startswith("local:"):
        return base_url
    parts = urlsplit(base_url.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def call_key(
    *,
    model: str,
    endpoint: str,
    messages: list[dict[str, Any]],
    temperature: float,
    max_tokens: int,
    seed: int,
    schema: dict[str, Any] | None,
    sample: int,
) -> str:
    payload = {
        "model": model,
        "endpoint": normalise_endpoint(endpoint),
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "seed": seed,
        "schema": schema,
        "sample": sample,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def resolve_cache_path(path: str | os.PathLike[str], cwd: Path | None = None) -> Path:
    """A relative cache path is relative to the project root. Queued DVC experiments run in
    `<root>/.dvc/tmp/exps/<tmp>/`; they resolve to the root's cache, so a sweep repeats no call."""
    p = Path(path)
    if p.is_absolute():
        return p
    here = (cwd or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i]) / p
    return here / p


class CallCache:
    """A thin SQLite store. WAL mode lets several processes read and write at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = resolve_cache_path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA_SQL)
        except (OSError, sqlite3.Error) as exc:
            raise LibraError(f"cannot open the LLM call cache {self.path}: {exc}; check llm.cache_path and permissions") from None

    def get(self, key: str) -> tuple[str, int, int] | None:
        row = self._db.execute(
            "SELECT reply, prompt_tokens, completion_tokens FROM calls WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else (row[0], int(row[1]), int(row[2]))

    def put(self, key: str, *, model: str, stage: str, reply: str, prompt_tokens: int, completion_tokens: int) -> None:
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, stage, reply, prompt_tokens, completion_tokens, time.time()),
            )
        except sqlite3.OperationalError as exc:
            raise LibraError(f"cannot write the LLM call cache {self.path}: {exc}; check free disk space") from None

    def stats(self) -> dict[str, Any]:
        total, p_tok, c_tok = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM calls"
        ).fetchone()
        by_stage = dict(self._db.execute("SELECT stage, COUNT(*) FROM calls GROUP BY stage ORDER BY stage").fetchall())
        by_model = dict(self._db.execute("SELECT model, COUNT(*) FROM calls GROUP BY model ORDER BY model").fetchall())
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.exists())
        return {
            "path": str(self.path),
            "entries": int(total),
            "prompt_tokens": int(p_tok),
            "completion_tokens": int(c_tok),
            "by_stage": by_stage,
            "by_model": by_model,
            "bytes": size,
        }

    def clear(self, stage: str | None = None) -> int:
        if stage is None:
            cur = self._db.execute("DELETE FROM calls")
        else:
            cur = self._db.execute("DELETE FROM calls WHERE stage = ?", (stage,))
        self._db.execute("VACUUM")
        return int(cur.rowcount)

    def export(self, dest: str | os.PathLike[str], *, force: bool = False) -> int:
        """Write a consistent single-file snapshot (no WAL side files) for sharing.

        An existing file at `dest` is kept unless `force`; a directory is an InputError."""
        target = Path(dest)
        if target.is_dir():
            raise InputError(
                f"cache export: {target} is a directory; give a file path such as {target / 'llm-cache.sqlite'}"
            )
        if target.exists() or target.is_symlink():
            if target.resolve() == self.path.resolve():
                raise InputError(f"cache export: {target} is the cache itself; export to another path")
            if not force:
                raise InputError(f"cache export: {target} already exists; pass --force to replace it, or choose another path")
        with atomic_path(target) as tmp:
            out = sqlite3.connect(tmp)
            try:
                self._db.backup(out)
                out.execute("PRAGMA journal_mode=DELETE")
            finally:
                out.close()
        return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def merge(self, source: str | os.PathLike[str]) -> int:
        """Add another cache's entries (a teammate's export); existing keys are kept.

        A missing file, a directory or a file that is not a libra cache is an InputError."""
        src = Path(source)
        if not src.exists():
            raise InputError(f"cache merge: {src} not found; export a cache with `libra cache export PATH` (or dvc pull it) first")
        if not src.is_file():
            raise InputError(f"cache merge: {src} is not a file; give the path of a file made by `libra cache export`")
        not_a_cache = InputError(
            f"cache merge: {src} is not a libra call cache (no calls table); give a file made by `libra cache export`"
        )
        try:
            probe = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)
            try:
                columns = [row[1] for row in probe.execute("PRAGMA table_info(calls)").fetchall()]
            finally:
                probe.close()
        except sqlite3.DatabaseError:
            raise not_a_cache from None
        if columns != ["key", "model", "stage", "reply", "prompt_tokens", "completion_tokens", "created"]:
            raise not_a_cache
        before = int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
        self._db.execute("ATTACH DATABASE ? AS other", (str(src),))
        try:
            self._db.execute("INSERT OR IGNORE INTO calls SELECT * FROM other.calls")
        finally:
            self._db.execute("DETACH DATABASE other")
        return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]) - before

    def close(self) -> None:
        self._db.close()
