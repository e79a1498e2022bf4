"""Atomic file writes and small table helpers shared by every stage.

Every output is written to a temporary file beside its target and renamed over it,
so an interrupted stage never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from libra.errors import LibraError


def _ensure_dir(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LibraError(f"cannot create directory {path.parent}: {exc.strerror}; check permissions and free space") from None


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success rename it over `path`, on failure remove it.

    The file gets the mode a plain open() would give it (0o666 less the umask), not mkstemp's 0o600."""
    target = Path(path)
    _ensure_dir(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise LibraError(f"cannot write {target}: {exc.strerror}; check permissions and free space") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise LibraError(f"cannot write {target}: {exc.strerror}; check permissions and free space") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it replaces `path` as a whole
    (the old directory is moved aside first, so `path` is never half-written), on failure it is removed."""
    target = Path(path)
    _ensure_dir(target)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LibraError(f"cannot write {target}: {exc.strerror}; check permissions and free space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def prompt_id(prompt: str) -> str:
    """A stable id for a prompt: sha256 of its text, 16 hex digits, the same across runs and machines."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_parquet(df: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        try:
            df.write_parquet(tmp, statistics=False)
        except pl.exceptions.ComputeError as exc:  # polars reports a failed write (disk full...) this way
            cause = str(exc).rsplit("IO error: ", 1)[-1]
            raise LibraError(f"cannot write {path}: {cause}; check permissions and free space") from None


def write_json(data: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_parquet(path: str | os.PathLike[str]) -> pl.DataFrame:
    p = Path(path)
    if not p.exists():
        raise LibraError(f"{p} not found; run `dvc repro` for the stage that writes it")
    return pl.read_parquet(p)
