"""params.yaml: one source of defaults, a generated reference, and every bad value a one-line error.

Errors are checked through the real `libra params` command where the issue describes it (exit
code 2, exactly one line on stderr naming the file, line and key) and through load_params for
the rest (the same code path, without a process per case).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic_core import to_jsonable_python

from libra.config import load_params
from libra.errors import ParamsError
from libra.params_doc import REQUIRED, leaves, params_doc

from .conftest import ROOT, subprocess_env

PARAMS = ROOT / "params.yaml"
DOC = ROOT / "docs" / "params.md"


def libra(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "libra.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines
    assert "Traceback" not in proc.stderr
    return lines[0]


def edited(tmp_path: Path, old: str, new: str, text: str | None = None) -> Path:
    """params.yaml with the one occurrence of `old` replaced by `new`."""
    text = PARAMS.read_text() if text is None else text
    assert text.count(old) == 1, f"test setup: {old!r} must occur once in params.yaml"
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- defaults in one place ----------------------------------------------------------------


def _at(raw: object, key: tuple[str, ...]) -> object:
    for part in key:
        if not isinstance(raw, dict) or part not in raw:
            return REQUIRED
        raw = raw[part]
    return raw


def test_every_code_default_equals_params_yaml() -> None:
    """Each key's default in libra/config.py equals its value in params.yaml (as loaded, so an
    entry of a dict of sections, such as eval.suites.xstest, may leave keys to its model)."""
    raw = yaml.safe_load(PARAMS.read_text())
    loaded = load_params(PARAMS).model_dump(mode="json")
    wrong = []
    for leaf in leaves():
        if "<name>" in leaf.key:  # a template for user-named entries (eval.endpoints.<name>.*)
            continue
        dotted = ".".join(leaf.key)
        if leaf.default is REQUIRED:
            continue
        default = to_jsonable_python(leaf.default)
        if _at(raw, leaf.key) is REQUIRED:
            wrong.append(f"{dotted}: libra/config.py has default {default!r} but params.yaml lacks the key "
                         "(add it to params.yaml, or drop the default)")  # fmt: skip
        elif default != _at(loaded, leaf.key):
            wrong.append(f"{dotted}: libra/config.py default {default!r} != params.yaml {_at(loaded, leaf.key)!r}")
    assert not wrong, "defaults disagree; params.yaml is the one source:\n" + "\n".join(wrong)


def test_every_key_has_a_description() -> None:
    missing = [".".join(leaf.key) for leaf in leaves() if not (leaf.description or "").strip()]
    assert not missing, f"add Field(description=...) in libra/config.py for: {', '.join(missing)}"


def test_docs_params_md_is_generated_from_the_models() -> None:
    proc = libra("params", "--doc")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == params_doc()
    assert DOC.read_text() == proc.stdout, "docs/params.md is stale: run `libra params --doc > docs/params.md`"


def test_catalog_path_is_gone(tmp_path: Path) -> None:
    """The catalog stage reads --catalog; a catalog.path param that changed nothing is an unknown key."""
    bad = edited(tmp_path, "catalog:\n", "catalog:\n  path: data/catalog/compounds.csv\n")
    assert "unknown key 'catalog.path'" in load_error(bad)


# -- YAML ---------------------------------------------------------------------------------


def test_duplicated_section_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    text = PARAMS.read_text()
    first = text.splitlines().index("dpo:") + 1
    path = tmp_path / "params.yaml"
    path.write_text(text + "\ndpo:\n  beta: 0.2\n")
    second = len(text.splitlines()) + 2
    line = one_error_line(libra("--params", path, "params"))
    assert f"lines {first} and {second}: dpo is given twice" in line and str(path) in line, line
    assert "merge them" in line


def test_duplicated_key_inside_a_section(tmp_path: Path) -> None:
    bad = edited(tmp_path, "  beta: 0.1\n", "  beta: 0.1\n  beta: 0.3\n")
    assert "dpo.beta is given twice" in load_error(bad)


def test_yaml_syntax_error_keeps_line_and_column(tmp_path: Path) -> None:
    bad = edited(tmp_path, "  beta: 0.1\n", "  beta: [0.1\n")
    line_no = bad.read_text().splitlines().index("  beta: [0.1") + 1
    line = one_error_line(libra("--params", bad, "params"))
    assert "invalid YAML" in line and f"line {line_no + 1} column" in line, line


def test_non_utf8_params_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(PARAMS.read_text().replace("  model: smollm2-135m-instruct\n", "  model: smollm2-\xe9\n", 1).encode("latin-1"))
    line = one_error_line(libra("--params", path, "params"))
    assert "line 7: byte 0xe9 is not UTF-8" in line and "save the file as UTF-8" in line, line


def test_bom_in_params_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + PARAMS.read_bytes())
    assert load_params(path).dpo.beta == 0.1


# -- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("max_steps: 240", "max_steps: true", ["dpo.max_steps = true", "not a number"]),
        ("  beta: 0.1", "  beta: .inf", ["dpo.beta", "finite number"]),
        ("  beta: 0.1", "  beta: .nan", ["dpo.beta", "finite number"]),
        ("  beta: 0.1", "  beta: '0.1'", ["dpo.beta", "remove the quotes"]),
        ("loss_weights: null", "loss_weights: [1.0, -0.5]", ["dpo.loss_weights.1 = -0.5", "greater than or equal to 0"]),
        ("target_modules: all-linear", "target_modules: []", ["dpo.lora.target_modules", "is empty"]),
        ("target_modules: all-linear", "target_modules: all_linear", ["dpo.lora.target_modules", "all-linear"]),
        ("tasks: [synthesis, acquisition,", "tasks: [synthesis, synthesis, acquisition,", ["seeds.tasks", "synthesis more than once"]),
        ("  greedy: true", "  greedy: 1", ["eval.greedy = 1", "valid boolean"]),
        ("loss_weights: null", "loss_weights: [0, 0.0]", ["dpo: loss_weights are all 0"]),
        ("  models: [base, dpo, base+gate] ", "  models: [base, dpo, base] ", ["eval: models lists base more than once"]),
        ("  models: [base, dpo, base+gate] ", "  models: [base, dpo+gate+gate] ", ["models lists 'dpo+gate+gate'", "one of these + '+gate'"]),
        ("  threshold: 0.0 ", "  threshold: high ", ["gate.threshold", "valid number"]),
        ("  layer: auto ", "  layer: -1 ", ["gate.layer must be auto or a hidden-state index >= 0"]),
        ("  cache_path: .libra/cache/llm.sqlite", "  cache_path: ''", ["llm.cache_path", "at least 1 character"]),
        ("  endpoints: {}", "  endpoints: {gpt 4o: {base_url: 'https://x.org/v1', model: m}}", ["eval: endpoints name 'gpt 4o'"]),
        ("  endpoints: {}", "  endpoints: {dpo: {base_url: 'https://x.org/v1', model: m}}", ["not base or dpo"]),
    ],
)
def test_bad_value_is_one_line_with_line_and_key(tmp_path: Path, old: str, new: str, needles: list[str]) -> None:
    bad = edited(tmp_path, old, new)
    line_no = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if new.strip() in text)
    message = load_error(bad)
    assert message.startswith(f"params: {bad}: line {line_no}: "), message
    for needle in needles:
        assert needle in message, message


def test_several_bad_values_are_reported_together(tmp_path: Path) -> None:
    text = PARAMS.read_text()
    for old, new in (("  beta: 0.1", "  beta: .inf"), ("max_steps: 240", "max_steps: true"), ("test_frac: 0.25", "test_frac: 2")):
        text = text.replace(old, new, 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    line = one_error_line(libra("--params", path, "params"))
    assert "3 problems" in line, line
    for key in ("dpo.beta", "dpo.max_steps", "split.test_frac"):
        assert key in line, line


# -- endpoints ----------------------------------------------------------------------------

GENERATOR_URL = "  generator:\n    base_url: local "


@pytest.mark.parametrize("url", ["''", "htp:/x", "http://", "ftp://example.org/v1", "Local", "'local '"])
def test_bad_base_url_fails_libra_params(tmp_path: Path, url: str) -> None:
    bad = edited(tmp_path, GENERATOR_URL, f"  generator:\n    base_url: {url} ")
    line = one_error_line(libra("--params", bad, "params"))
    assert "line 6: llm.generator.base_url" in line, line
    hint = "exactly 'local'" if url.strip("'").strip().lower() == "local" else "http(s) URL with a host"
    assert hint in line, line


@pytest.mark.parametrize("url", ["local", "http://127.0.0.1:8000/v1", "https://api.openai.com/v1"])
def test_good_base_url_passes(tmp_path: Path, url: str) -> None:
    good = edited(tmp_path, GENERATOR_URL, f"  generator:\n    base_url: {url} ")
    assert load_params(good).llm.generator.base_url == url


def test_endpoint_base_url_is_checked_too(tmp_path: Path) -> None:
    bad = edited(tmp_path, "  endpoints: {}", "  endpoints: {gpt: {base_url: 'htp:/x', model: gpt-4o}}")
    assert "eval.endpoints.gpt.base_url" in load_error(bad)


@pytest.mark.parametrize("secret", ["sk-proj-SENTINEL0123456789abcdef", "abcdef0123456789abcdef0123456789"])
def test_api_key_pasted_into_api_key_env_is_refused_and_never_printed(tmp_path: Path, secret: str) -> None:
    bad = edited(tmp_path, "    api_key_env: OPENAI_API_KEY\n    temperature: 0.7", f"    api_key_env: {secret}\n    temperature: 0.7")
    proc = libra("--params", bad, "params")
    line = one_error_line(proc)
    assert "api_key_env must name an environment variable, not hold the key" in line, line
    assert secret not in proc.stderr + proc.stdout
    assert secret[:8] not in proc.stderr + proc.stdout


def test_env_var_names_pass_api_key_env(tmp_path: Path) -> None:
    good = edited(tmp_path, "    api_key_env: OPENAI_API_KEY\n    temperature: 0.7", "    api_key_env: MY_VLLM_KEY\n    temperature: 0.7")
    assert load_params(good).llm.generator.api_key_env == "MY_VLLM_KEY"
