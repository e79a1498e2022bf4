"""Shared fixtures: the real embedded llama.cpp server (started once), params, paths."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from libra.config import LocalServer, Params, parse_params
from libra.llm.local import LOCAL_URL_ENV, local_server

ROOT = Path(__file__).resolve().parents[1]
TINY_PROFILE = ROOT / "tests" / "profiles" / "tiny.yaml"


def tiny_raw() -> dict:
    return yaml.safe_load(TINY_PROFILE.read_text())


def tiny_params(tmp_path: Path, **overrides: dict) -> Params:
    """The tiny profile with its cache in tmp_path and section overrides merged in."""
    raw = tiny_raw()
    raw["llm"]["cache_path"] = str(tmp_path / "llm.sqlite")
    for section, values in overrides.items():
        _merge(raw.setdefault(section, {}), values)
    return parse_params(raw)


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this interpreter's bin dir first on PATH, so that
    `python`, `dvc` and `libra` inside dvc.yaml commands are the project's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def local_url() -> Iterator[str]:
    """One real llama.cpp server for the whole test session, shared through $LIBRA_LOCAL_URL."""
    previous = os.environ.get(LOCAL_URL_ENV)
    if previous:
        yield previous
        return
    with local_server("smollm2-135m-instruct", LocalServer()) as url:
        os.environ[LOCAL_URL_ENV] = url
        try:
            yield url
        finally:
            os.environ.pop(LOCAL_URL_ENV, None)
