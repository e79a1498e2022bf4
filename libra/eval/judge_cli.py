"""`libra judge`: judge any JSONL file of {prompt, response} rows.

    libra judge --input answers.jsonl --output judged.jsonl --judges rules,classifier

Each output row is the input row plus `verdict` (fused by judge.fusion), `verdict_reason`
and `verdict_<judge>` / `reason_<judge>` for every judge that ran. The classifier judge
needs a trained model (`dvc repro classifier`); when it is missing the classifier is
skipped with one line on stderr and the other judges still run.

A row may also carry `reasoning` (a reasoning model's trace, string or null) and `label`
(`legitimate` or `illegitimate`). The judges read the final answer: a `<think>` block in
`response` is split off and read with `reasoning`. A withheld final answer whose trace
carries operational content is not withheld (`verdict` compliance, the final answer's
own verdict in `verdict_final`, the finding in `reasoning_leak`) unless `label` says the
prompt is legitimate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

from libra.config import Params
from libra.errors import InputError
from libra.eval.judge import JUDGE_ORDER, judge_table, open_judges
from libra.io import atomic_path


# Fields a row may carry beside prompt and response, with their allowed values (empty: any string).
OPTIONAL: dict[str, tuple[str, ...]] = {"reasoning": (), "label": ("legitimate", "illegitimate")}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows with string `prompt` and `response`; errors name the line."""
    if not path.exists():
        raise InputError(f"{path} not found; pass a JSONL file with one {{\"prompt\", \"response\"}} object per line")
    if not path.is_file():
        raise InputError(f"{path} is not a file; pass a JSONL file with one {{\"prompt\", \"response\"}} object per line")
    rows: list[dict[str, Any]] = []
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (some editors write one) is not content
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{path}:{lineno}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8; save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: invalid JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object with prompt and response, got {type(row).__name__}")
        for key in ("prompt", "response"):
            if not isinstance(row.get(key), str):
                problem = "missing" if key not in row else f"not a string ({type(row[key]).__name__})"
                raise InputError(f"{path}:{lineno}: {key!r} is {problem}; every row needs string prompt and response")
        for key, allowed in OPTIONAL.items():
            value = row.get(key)
            if value is not None and (not isinstance(value, str) or (allowed and value not in allowed)):
                want = f"one of {list(allowed)}" if allowed else "a string"
                raise InputError(f"{path}:{lineno}: {key!r} is {value!r}; it must be {want} or null when given")
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"{path}:{lineno}: holds a lone surrogate escape (such as \\ud800) that is not a character; "
                "fix or remove it (a pair such as \\ud83d\\ude00 is fine)"
            ) from None
        rows.append(row)
    if not rows:
        raise InputError(f"{path} has no rows; write one {{\"prompt\", \"response\"}} object per line")
    return rows


def judge_file(input: Path, output: Path, judges: list[str], classifier_path: Path | None, params: Params) -> dict[str, Any]:
    """Judge `input` into `output`; return the stats (counts, per judge, kappas)."""
    if output.resolve() == input.resolve() or (output.exists() and input.exists() and output.samefile(input)):
        raise InputError(f"--output {output} is the --input file; judging would overwrite it, write to another path")
    unknown = [j for j in judges if j not in JUDGE_ORDER]
    if unknown or not judges:
        raise InputError(f"--judges {','.join(judges) or '(empty)'}: choose from {','.join(JUDGE_ORDER)}")
    rows = read_jsonl(input)
    selected = list(dict.fromkeys(judges))
    if "classifier" in selected and (classifier_path is None or not classifier_path.exists()):
        print(
            f"warning: classifier judge skipped: no model at {classifier_path}; train it with `dvc repro classifier`",
            file=sys.stderr,
        )
        selected.remove("classifier")
    if not selected:
        raise InputError("no judge left to run; train the classifier (`dvc repro classifier`) or add rules or llm to --judges")
    fusion = params.judge.fusion
    if fusion == "llm_only" and "llm" not in selected:
        raise InputError("judge.fusion is llm_only but the llm judge is not selected; add llm to --judges or change judge.fusion")

    columns = {"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]}
    for key in OPTIONAL:
        if any(key in r for r in rows):
            columns[key] = [r.get(key) for r in rows]
    table = pl.DataFrame(columns, schema={k: pl.String for k in columns})
    usage = output.with_name(output.name + ".usage.json")
    with open_judges(selected, params, classifier_path=classifier_path, stage="judge-cli", usage_path=usage) as fns:
        judged, stats = judge_table(table, fns, fusion=fusion)

    added = [c for c in judged.columns if c not in ("prompt", "response", *OPTIONAL)]
    with atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row, extra in zip(rows, judged.select(added).iter_rows(named=True)):
            fh.write(json.dumps({**row, **extra}, ensure_ascii=False) + "\n")
    return {"input": str(input), "output": str(output), **stats}
