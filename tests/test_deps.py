"""Each stage's deps in dvc.yaml cover every libra module its script imports (transitively).

If this fails, `python -m libra.deps --missing` prints, per stage, the deps to add."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from libra.deps import closure, covered, missing, stages

from .conftest import ROOT


@pytest.mark.parametrize("stage", sorted(stages()))
def test_stage_deps_cover_its_import_closure(stage: str) -> None:
    gaps = missing().get(stage, [])
    assert not gaps, f"dvc.yaml stage {stage!r} lacks deps on {', '.join(gaps)}; add them (python -m libra.deps --missing)"


def test_every_stage_script_is_found() -> None:
    """A cmd the parser does not understand would make the test above pass vacuously."""
    for name, spec in stages().items():
        assert "stages/" in spec["cmd"], name
        assert closure(spec["cmd"].split()[1]), f"{name}: no libra import found in {spec['cmd'].split()[1]}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_closure_follows_transitive_relative_and_lazy_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "stages/s.py": "from libra.data import a\nfrom libra.stage import entrypoint\n",
        "libra/__init__.py": "",
        "libra/stage.py": "from libra.errors import LibraError\n",
        "libra/errors.py": "",
        "libra/config.py": "",
        "libra/data/__init__.py": "",
        "libra/data/a.py": "from .b import f\nimport libra.config\n",
        "libra/data/b.py": "def f():\n    from libra.eval.judges import verdict\n",
        "libra/eval/__init__.py": "",
        "libra/eval/judges/__init__.py": "NAMES = 1\n",
        "libra/eval/judges/verdict.py": "from ..score import x\n",
        "libra/eval/score.py": "x = 1\n",
        "libra/unused.py": "",
    })  # fmt: skip
    assert closure("stages/s.py", root) == {
        "libra/data/a.py", "libra/data/b.py", "libra/config.py", "libra/eval/judges/__init__.py",
        "libra/eval/judges/verdict.py", "libra/eval/score.py",
    }  # fmt: skip
    dvc = root / "dvc.yaml"
    dvc.write_text(
        "stages:\n"
        "  one:\n    cmd: python stages/s.py --x y\n    deps: [stages/s.py, libra/data, libra/config.py]\n"
        "  many:\n    foreach: [a, b]\n    do:\n      cmd: python stages/s.py --m ${item}\n"
        "      deps: [libra/data/a.py, libra/eval/judges, libra/eval/score.py, libra/config.py]\n"
    )
    assert missing(dvc, root) == {
        "one": ["libra/eval/judges/__init__.py", "libra/eval/judges/verdict.py", "libra/eval/score.py"],
        "many": ["libra/data/b.py"],
    }


def test_folder_dep_covers_files_below_it_only() -> None:
    assert covered("libra/eval/judges/rules.py", ["libra/eval/judges"])
    assert not covered("libra/eval/judges_extra.py", ["libra/eval/judges"])
    assert covered("libra/io.py", ["libra/io.py"])


def test_missing_cli_prints_per_stage_lines() -> None:
    proc = subprocess.run([sys.executable, "-m", "libra.deps", "--missing"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    gaps = missing()
    assert proc.returncode == (1 if gaps else 0), proc.stderr
    for name, mods in gaps.items():
        assert f"{name}: {', '.join(mods)}" in proc.stdout


def test_suggest_prints_yaml_deps_lines_that_close_every_gap() -> None:
    import yaml

    proc = subprocess.run([sys.executable, "-m", "libra.deps", "--suggest"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    suggested = yaml.safe_load(proc.stdout) or {}
    gaps = missing()
    assert set(suggested) == set(gaps)
    for name, mods in gaps.items():
        deps = suggested[name]["deps"]
        assert all(covered(m, deps) for m in mods), name
        assert deps[: len(stages()[name]["deps"])] == [d if isinstance(d, str) else next(iter(d)) for d in stages()[name]["deps"]]


def test_the_committed_lock_is_a_run_of_exactly_the_stages_dvc_yaml_defines() -> None:
    """A stage renamed or dropped from eval.models leaves its lock entry behind; `dvc repro` keeps it."""
    import yaml

    proc = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    defined = set(proc.stdout.split())
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert not locked - defined, f"dvc.lock has entries for stages dvc.yaml does not define: {sorted(locked - defined)}"
    assert not defined - locked, f"dvc.lock lacks stages of dvc.yaml: {sorted(defined - locked)}; commit a full `dvc repro`"
