"""Stage dependencies from the code: each stage script's import closure inside libra/.

    python -m libra.deps --missing     # per stage, the libra modules to add to its deps in dvc.yaml
    python -m libra.deps --closure     # per stage, every libra module it imports
    python -m libra.deps --suggest     # per stage, its deps line with the missing modules added

A stage must rerun when any libra module it imports changes, directly or through other libra
modules (imports inside functions count: they run). Error plumbing (libra/errors.py,
libra/stage.py) and empty package __init__.py files are left out. A folder in `deps` (such as
libra/eval/judges) covers every file below it. tests/test_deps.py fails naming the stage and
the missing module.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUMBING = frozenset({"libra/errors.py", "libra/stage.py"})
_SCRIPT = re.compile(r"(?<![\w/])(stages/[\w/]+\.py)")


def _module_file(root: Path, dotted: str) -> str | None:
    """libra/a/b.py or libra/a/b/__init__.py for `libra.a.b`, relative to root; None if neither."""
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root).as_posix()
    return None


def _package_of(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1])  # a module's package; for pkg/__init__.py, pkg itself


def imported_modules(root: Path, rel: str) -> set[str]:
    """The libra module files one file imports (any nesting level), as paths relative to root."""
    tree = ast.parse((root / rel).read_text(encoding="utf-8"), filename=rel)
    found: set[str] = set()
    package = _package_of(rel)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import submodule`
        for name in names:
            if name != "libra" and not name.startswith("libra."):
                continue
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # the parent packages run too
                path = _module_file(root, ".".join(parts[:i]))
                if path is not None:
                    found.add(path)
    return found


def _counts(root: Path, rel: str) -> bool:
    if rel in PLUMBING:
        return False
    if rel.endswith("__init__.py"):
        return bool((root / rel).read_text(encoding="utf-8").strip())
    return True


def closure(script: str, root: Path = ROOT) -> set[str]:
    """Every libra module `script` imports, transitively, that should be a dep."""
    return set(_closure(root, script))


@cache
def _closure(root: Path, script: str) -> frozenset[str]:
    seen: set[str] = set()
    todo = [script]
    while todo:
        for mod in imported_modules(root, todo.pop()):
            if mod not in seen:
                seen.add(mod)
                todo.append(mod)
    return frozenset(m for m in seen if _counts(root, m))


def stages(dvc_yaml: Path | None = None) -> dict[str, dict[str, Any]]:
    """Stage name -> its definition; a foreach/matrix stage is one template (its `do` or itself)."""
    data = yaml.safe_load((dvc_yaml or ROOT / "dvc.yaml").read_text(encoding="utf-8")) or {}
    out: dict[str, dict[str, Any]] = {}
    for name, spec in (data.get("stages") or {}).items():
        out[name] = spec["do"] if "foreach" in spec else spec
    return out


def _dep_paths(spec: dict[str, Any]) -> list[str]:
    deps = []
    for dep in spec.get("deps") or []:
        path = next(iter(dep)) if isinstance(dep, dict) else str(dep)
        deps.append(path.rstrip("/").removeprefix("./"))
    return deps


def covered(module: str, deps: list[str]) -> bool:
    return any(module == d or module.startswith(d + "/") for d in deps)


def missing(dvc_yaml: Path | None = None, root: Path = ROOT) -> dict[str, list[str]]:
    """Stage name -> the libra modules its script imports that its deps do not cover."""
    result: dict[str, list[str]] = {}
    for name, spec in stages(dvc_yaml).items():
        deps = _dep_paths(spec)
        needed: set[str] = set()
        for script in _SCRIPT.findall(str(spec.get("cmd", ""))):
            if (root / script).is_file():
                needed |= closure(script, root)
        gaps = sorted(m for m in needed if not covered(m, deps))
        if gaps:
            result[name] = gaps
    return result


def _flow(item: str) -> str:
    """An item of a YAML flow sequence, quoted when it holds an indicator (`${item}`...)."""
    return f'"{item}"' if any(c in item for c in "{}[],:#&*!|>'\"%@`$ ") else item


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m libra.deps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--missing", action="store_true", help="per stage, the deps to add to dvc.yaml")
    group.add_argument("--closure", action="store_true", help="per stage, every libra module its script imports")
    group.add_argument("--suggest", action="store_true", help="per stage lacking some, its full deps line with them added")
    parser.add_argument("--dvc-yaml", type=Path, default=None, help="default: dvc.yaml at the project root")
    args = parser.parse_args(argv)
    if args.missing:
        gaps = missing(args.dvc_yaml)
        for name, mods in gaps.items():
            print(f"{name}: {', '.join(mods)}")
        if not gaps:
            print("every stage's deps cover the libra modules it imports")
        return 1 if gaps else 0
    if args.suggest:
        specs = stages(args.dvc_yaml)
        for name, mods in missing(args.dvc_yaml).items():
            deps = [*_dep_paths(specs[name]), *mods]
            print(f"{name}:\n  deps: [{', '.join(_flow(d) for d in deps)}]")
        return 0
    for name, spec in stages(args.dvc_yaml).items():
        mods: set[str] = set()
        for script in _SCRIPT.findall(str(spec.get("cmd", ""))):
            if (ROOT / script).is_file():
                mods |= closure(script)
        print(f"{name}: {', '.join(sorted(mods))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
