"""Evaluation suites: tables of labelled prompts that every model is answered and scored on.

    spec = SuiteSpec(builtin="xstest", subset=150)
    suite = build_xstest(read_xstest("data/xstest/xstest_prompts.csv"), spec)
    suite = build_in_domain(compounds, train, test, params.seeds, SuiteSpec(builtin="in_domain"))
    suite = load_suite_file("data/suites_src/my.jsonl", "mysuite")   # InputError names file, row, column

A suite table has one row per distinct prompt, sorted by prompt_id, with the columns
SUITE_COLUMNS: the required ones (prompt_id, prompt, label, suite, partition) and
metadata that is null where unknown. Suites hold prompts only; no answer is generated here.

Builtins:
- `xstest`: XSTest's prompts (safe -> legitimate, unsafe -> illegitimate; partition safe/unsafe),
  a seeded subset stratified by (label, type), or all 450 with `subset: 0`.
- `in_domain`: evaluation templates (libra.data.eval_templates, never used for training)
  filled with compounds and labelled by the policy table. Partitions:
  `unseen_compound` (compounds in no training pair: the test split's, plus catalog
  compounds drawn to reach `unseen_compounds`), `seen_compound` (training compounds with
  tasks they were not trained on, in unseen phrasings) and `robustness` (unseen compounds;
  both labels in the same adversarial framings and identifier namings).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from libra.data.eval_templates import EVAL_TASK_PROMPTS, FRAMINGS, IDENTIFIER_NAMES, MULTIPART
from libra.data.reserve import reserved_for_eval_expr
from libra.config import DEFAULT_SUITES, SuiteSpec, check_suites  # noqa: F401  (re-exported)
from libra.errors import InputError, LibraError
from libra.io import prompt_id

if TYPE_CHECKING:
    from libra.config import SeedsParams

LABELS = ("legitimate", "illegitimate")
REQUIRED_COLUMNS = ("prompt_id", "prompt", "label", "suite", "partition")
METADATA_COLUMNS = ("task", "class", "compound", "compound_id", "framing", "type", "group", "focus", "note")
SUITE_COLUMNS = REQUIRED_COLUMNS + METADATA_COLUMNS
USER_DEFAULT_PARTITION = "all"
XSTEST_SIZE = 450
ROBUSTNESS_FRAMINGS = ("hypothetical", "fiction", "role", "override", "smiles", "iupac", "cas", "multipart")





# ---------------------------------------------------------------- table shape and validation


def finalize(rows: Iterable[dict[str, Any]], suite: str) -> pl.DataFrame:
    """Rows -> the suite table: every column, prompt_id filled, sorted; a prompt twice is an error."""
    records = []
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        rec = {c: row.get(c) for c in SUITE_COLUMNS}
        rec["suite"], rec["prompt_id"] = suite, prompt_id(rec["prompt"])
        if rec["prompt_id"] in first:
            raise LibraError(
                f"suite {suite}: prompt {rec['prompt'][:60]!r} was built twice; this is a bug in its builder"
            )
        first[rec["prompt_id"]] = rec
        records.append(rec)
    schema = dict.fromkeys(SUITE_COLUMNS, pl.String)
    return (
        pl.DataFrame(records, schema=schema, orient="row").sort("prompt_id") if records else pl.DataFrame(schema=schema)
    )


def suite_stats(suite: pl.DataFrame) -> dict[str, Any]:
    """Counts a reader needs: prompts per partition and label, compounds."""
    by = {
        f"{p}/{lab}": n
        for p, lab, n in suite.group_by("partition", "label").len().sort("partition", "label").iter_rows()
    }
    compounds = suite.filter(pl.col("compound_id").is_not_null())
    per_partition = {
        p: int(n)
        for p, n in compounds.group_by("partition").agg(pl.col("compound_id").n_unique()).sort("partition").iter_rows()
    }
    return {
        "prompts": suite.height,
        "by_label": {lab: int(n) for lab, n in suite.group_by("label").len().sort("label").iter_rows()},
        "by_partition_label": by,
        "by_framing": {
            str(f): int(n)
            for f, n in suite.filter(pl.col("framing").is_not_null())
            .group_by("framing")
            .len()
            .sort("framing")
            .iter_rows()
        },
        "compounds_by_partition": per_partition,
    }


# ---------------------------------------------------------------- user files


def _decode(path: Path, data: bytes, line_word: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a BOM (Excel's UTF-8 CSV) is accepted and dropped
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"{path} {line_word} {line}: byte 0x{data[exc.start]:02x} at character {exc.start - line_start + 1} "
            "is not UTF-8; re-save the file with UTF-8 encoding"
        ) from None


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    text = _decode(path, path.read_bytes(), "line")
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path} line {n}: not valid JSON ({exc.msg} at character {exc.colno}); "
                'each line must be one object such as {"prompt": "...", "label": "legitimate"}'
            ) from None
        if not isinstance(obj, dict):
            raise InputError(
                f'{path} line {n}: a {type(obj).__name__}, not an object; write {{"prompt": ..., "label": ...}}'
            )
        out.append((f"line {n}", obj))
    return out


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    text = _decode(path, path.read_bytes(), "row")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out: list[tuple[str, dict[str, Any]]] = []
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: report where the row begins
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            hint = (
                "a quoted field opened here is never closed; close the quote"
                if "end of data" in str(exc)
                else 'a quote inside a field must be doubled ("")'
            )
            raise InputError(f"{path} row {start}: CSV syntax error ({exc}); {hint}") from None
        if header is None:
            header = [h.strip() for h in fields]
            continue
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise InputError(
                f"{path} row {start}: {len(fields)} fields, the header has {len(header)} ({','.join(header)}); "
                "quote fields that contain commas"
            )
        out.append((f"row {start}", dict(zip(header, fields))))
    if header is None:
        raise InputError(f"{path} is empty; it needs a header row with at least prompt,label")
    if not out:
        # The header alone still says which columns exist, for the missing-column check.
        out.append(("row 1", dict.fromkeys(header, None) | {"__header_only__": True}))
    return out


def _read_parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several kinds for a file that is not parquet
        raise InputError(
            f"{path}: cannot be read as parquet ({str(exc).splitlines()[0]}); write it with a parquet library"
        ) from None
    if df.height == 0:
        return [("row 1", dict.fromkeys(df.columns, None) | {"__header_only__": True})]
    return [(f"row {i}", rec) for i, rec in enumerate(df.to_dicts(), start=1)]


def _check_columns(path: Path, first: dict[str, Any]) -> None:
    missing = [c for c in ("prompt", "label") if c not in first]
    if missing:
        have = ", ".join(k for k in first if k != "__header_only__") or "none"
        raise InputError(
            f"{path}: missing column {missing[0]!r} (columns found: {have}); a suite file needs "
            "prompt and label (legitimate | illegitimate), and may add partition, task, compound, ..."
        )


def load_suite_file(path: str | Path, suite: str) -> pl.DataFrame:
    """Read a user suite (.jsonl, .csv or .parquet) into the suite table; the first problem raises
    InputError naming the file, the row (CSV and parquet: row, header = row 1 in CSV; JSONL: line)
    and the column. Columns outside SUITE_COLUMNS are ignored (the stage reports them)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p} not found; put the suite file there or fix its path in eval.suites.{suite}.path")
    readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise InputError(f"{p}: unknown suite file type {p.suffix!r}; use .jsonl, .csv or .parquet")
    records = reader(p)
    if not records:
        raise InputError(f"{p} holds no prompts; add one row per prompt with prompt and label")
    _check_columns(p, records[0][1])
    if records[0][1].get("__header_only__"):
        raise InputError(f"{p} has columns but no rows; add one row per prompt")
    rows: list[dict[str, Any]] = []
    seen: dict[str, tuple[str, str]] = {}
    for where, rec in records:
        _check_columns(p, rec)
        prompt, label = rec["prompt"], rec["label"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{p} {where}, column prompt: the prompt is empty; write it or delete the row")
        label_norm = label.strip().lower() if isinstance(label, str) else label
        if label_norm not in LABELS:
            raise InputError(
                f"{p} {where}, column label: {label!r} is not legitimate or illegitimate; "
                "use legitimate for requests a model should answer, illegitimate for ones it should refuse"
            )
        pid = prompt_id(prompt)
        if pid in seen:
            other, other_label = seen[pid]
            what = "with the other label" if other_label != label_norm else "again"
            raise InputError(
                f"{p} {where}, column prompt: the prompt of {other} appears {what}; keep one row per prompt"
            )
        seen[pid] = (where, label_norm)
        row = {c: (None if rec.get(c) in (None, "") else str(rec[c])) for c in METADATA_COLUMNS}
        partition = rec.get("partition")
        row |= {
            "prompt": prompt,
            "label": label_norm,
            "partition": str(partition) if partition not in (None, "") else USER_DEFAULT_PARTITION,
        }
        rows.append(row)
    return finalize(rows, suite)


def ignored_columns(path: str | Path) -> list[str]:
    """Columns of a user file that the suite table does not keep (reported, not silently dropped)."""
    p = Path(path)
    readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    keys: set[str] = set()
    for _, rec in readers[p.suffix.lower()](p):
        keys |= set(rec)
    return sorted(keys - set(SUITE_COLUMNS) - {"__header_only__"})


# ---------------------------------------------------------------- xstest


def read_xstest(path: str | Path) -> pl.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p} not found; it ships in the repository (data/xstest/), restore it with git")
    df = pl.read_csv(p, infer_schema=False)
    missing = [c for c in ("prompt", "type", "label", "focus", "note") if c not in df.columns]
    if missing:
        raise InputError(
            f"{p}: missing column {missing[0]!r}; use XSTest's xstest_prompts.csv (id,prompt,type,label,focus,note)"
        )
    bad = df.filter(~pl.col("label").is_in(["safe", "unsafe"]))
    if bad.height:
        raise InputError(f"{p}: label {bad['label'][0]!r} is not safe or unsafe; use XSTest's xstest_prompts.csv")
    return df


def _allocate(sizes: dict[Any, int], n: int, rng: random.Random) -> dict[Any, int]:
    """n split over groups in proportion to their sizes (largest remainder; ties in seeded order)."""
    total = sum(sizes.values())
    quota = {k: n * v / total for k, v in sizes.items()}
    take = {k: int(q) for k, q in quota.items()}
    order = sorted(sizes)
    rng.shuffle(order)
    for k in sorted(order, key=lambda k: -(quota[k] - take[k]))[: n - sum(take.values())]:
        take[k] += 1
    return take


def _stratified_subset(df: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """n rows: split over labels in proportion, then within a label over types; seeded."""
    rng = random.Random(f"{seed}:xstest")
    per_label = _allocate(dict(df.group_by("label").len().iter_rows()), n, rng)
    keep: list[str] = []
    for label in sorted(per_label):
        sub = df.filter(pl.col("label") == label)
        per_type = _allocate(dict(sub.group_by("type").len().iter_rows()), per_label[label], rng)
        for typ in sorted(per_type):
            prompts = sorted(sub.filter(pl.col("type") == typ)["prompt"].to_list())
            rng.shuffle(prompts)
            keep += prompts[: per_type[typ]]
    return df.filter(pl.col("prompt").is_in(keep))


def build_xstest(xstest: pl.DataFrame, spec: SuiteSpec, suite: str = "xstest") -> pl.DataFrame:
    if spec.subset and spec.subset < xstest.height:
        xstest = _stratified_subset(xstest, spec.subset, spec.seed)
    rows = [
        {
            "prompt": r["prompt"],
            "label": "legitimate" if r["label"] == "safe" else "illegitimate",
            "partition": r["label"],
            "type": r["type"],
            "focus": r["focus"],
            "note": r["note"],
        }
        for r in xstest.iter_rows(named=True)
    ]
    return finalize(rows, suite)


# ---------------------------------------------------------------- in_domain


def _balanced(pool: list[dict[str, Any]], n: int, keys: tuple[str, ...], rng: random.Random) -> list[dict[str, Any]]:
    """n rows spread as evenly as the pool allows over each key (task, compound...), seeded."""
    remaining = list(pool)
    rng.shuffle(remaining)
    counts = {k: Counter() for k in keys}
    taken = []
    while remaining and len(taken) < n:
        best = min(range(len(remaining)), key=lambda i: sum(counts[k][remaining[i][k]] for k in keys))
        row = remaining.pop(best)
        for k in keys:
            counts[k][row[k]] += 1
        taken.append(row)
    return taken


def unseen_compounds(
    compounds: pl.DataFrame, train: pl.DataFrame, test: pl.DataFrame, n: int, seed: int
) -> pl.DataFrame:
    """Compounds in no training pair: the test split's, then catalog ones reserved for evaluation
    (libra/data/reserve.py) drawn (seeded, classes alternating) until there are n. Returned with a `source` column: test_split | catalog."""
    trained = set(train["compound_id"].drop_nulls().to_list())  # general-domain rows have no compound
    from_test = sorted(set(test["compound_id"].drop_nulls().to_list()) - trained)
    # Only the reserved half of the catalog: the augment stage trains on the other half.
    rest = compounds.filter(
        ~pl.col("compound_id").is_in(sorted(trained | set(from_test)))
        & reserved_for_eval_expr()
    ).sort("compound_id")
    by_class: dict[str, list[str]] = {}
    for cid, cls in rest.select("compound_id", "class").iter_rows():
        by_class.setdefault(cls, []).append(cid)
    for cls, ids in by_class.items():
        random.Random(f"{seed}:unseen:{cls}").shuffle(ids)
    cls_of = dict(compounds.select("compound_id", "class").iter_rows())
    have = Counter(cls_of.get(c) for c in from_test)
    drawn: list[str] = []
    while len(from_test) + len(drawn) < n and any(by_class.values()):
        cls = min((c for c in sorted(by_class) if by_class[c]), key=lambda c: have[c])
        drawn.append(by_class[cls].pop(0))
        have[cls] += 1
    source = {c: "test_split" for c in from_test} | {c: "catalog" for c in drawn}
    return (
        compounds.filter(pl.col("compound_id").is_in(sorted(source)))
        .with_columns(pl.col("compound_id").replace_strict(source).alias("source"))
        .sort("compound_id")
    )


def iupac_names(compounds: pl.DataFrame) -> dict[str, str]:
    """IUPAC names looked up offline by CAS (chemicals' PubChem subset); compounds whose IUPAC
    name is missing or contains their common name ("molecular chlorine") are left out: it would
    not hide the name, so they get no IUPAC framing."""
    from chemicals.identifiers import search_chemical

    out = {}
    for cid, name, cas in compounds.select("compound_id", "name", "cas").iter_rows():
        try:
            iupac = (search_chemical(cas).iupac_name or "").strip() if cas else ""
        except ValueError:
            continue
        if iupac and name.lower() not in iupac.lower():
            out[cid] = iupac
    return out


def _question(task: str, variant: int, compound: str) -> str:
    return EVAL_TASK_PROMPTS[task][variant].format(compound=compound)


def _task_pool(
    compounds: pl.DataFrame, seeds: SeedsParams, exclude: set[tuple[str, str]] = frozenset()
) -> list[dict[str, Any]]:
    pool = []
    for c in compounds.sort("compound_id").iter_rows(named=True):
        for task in seeds.tasks:
            if (c["compound_id"], task) in exclude:
                continue
            for variant in range(len(EVAL_TASK_PROMPTS[task])):
                pool.append(
                    {
                        "compound_id": c["compound_id"], "compound": c["name"], "class": c["class"], "group": c["group"],
                        "task": task, "variant": variant, "label": seeds.policy[c["class"]][task],
                    }
                )  # fmt: skip
    return pool


def _plain(rows: list[dict[str, Any]], partition: str) -> list[dict[str, Any]]:
    return [
        {**r, "prompt": _question(r["task"], r["variant"], r["compound"]), "partition": partition, "framing": "plain"}
        for r in rows
    ]


def _robustness(
    pool: list[dict[str, Any]], per_label: int, identifiers: dict[str, dict[str, str]], rng: random.Random
) -> list[dict[str, Any]]:
    """per_label prompts per label, spread over ROBUSTNESS_FRAMINGS, both labels in every framing."""
    out: list[dict[str, Any]] = []
    quota = {f: per_label // len(ROBUSTNESS_FRAMINGS) for f in ROBUSTNESS_FRAMINGS}
    for f in ROBUSTNESS_FRAMINGS[: per_label % len(ROBUSTNESS_FRAMINGS)]:
        quota[f] += 1
    legit_by_compound: dict[str, list[dict[str, Any]]] = {}
    for r in pool:
        if r["label"] == "legitimate":
            legit_by_compound.setdefault(r["compound_id"], []).append(r)
    for framing in ROBUSTNESS_FRAMINGS:
        for label in LABELS:
            candidates = [r for r in pool if r["label"] == label]
            if framing in identifiers:
                candidates = [r for r in candidates if r["compound_id"] in identifiers[framing]]
            for r in _balanced(candidates, quota[framing], ("task", "compound_id"), rng):
                base = {**r, "partition": "robustness", "framing": framing}
                if framing in FRAMINGS:
                    template = FRAMINGS[framing][rng.randrange(len(FRAMINGS[framing]))]
                    base["prompt"] = template.format(question=_question(r["task"], r["variant"], r["compound"]))
                elif framing in IDENTIFIER_NAMES:
                    shown = IDENTIFIER_NAMES[framing].format(value=identifiers[framing][r["compound_id"]])
                    base["prompt"] = _question(r["task"], r["variant"], shown)
                else:  # multipart: two harmless questions about the same compound around this one
                    others = [o for o in legit_by_compound.get(r["compound_id"], []) if o["task"] != r["task"]]
                    tasks_seen: set[str] = set()
                    fillers = []
                    for o in rng.sample(others, len(others)):
                        if o["task"] not in tasks_seen:
                            tasks_seen.add(o["task"])
                            fillers.append(_question(o["task"], o["variant"], o["compound"]))
                        if len(fillers) == 2:
                            break
                    if len(fillers) < 2:
                        continue
                    parts = fillers[:]
                    parts.insert(rng.randrange(3), _question(r["task"], r["variant"], r["compound"]))
                    template = MULTIPART[rng.randrange(len(MULTIPART))]
                    base["prompt"] = template.format(q1=parts[0], q2=parts[1], q3=parts[2])
                out.append(base)
    return out


def build_in_domain(
    compounds: pl.DataFrame,
    train: pl.DataFrame,
    test: pl.DataFrame,
    seeds: SeedsParams,
    spec: SuiteSpec,
    suite: str = "in_domain",
    iupac: dict[str, str] | None = None,
) -> pl.DataFrame:
    """The in-domain suite from the catalog and the split (see the module docstring).

    `iupac` maps compound_id -> IUPAC name; looked up with `iupac_names` when not given.
    """
    rng = random.Random(f"{spec.seed}:in_domain")
    unseen = unseen_compounds(compounds, train, test, spec.unseen_compounds, spec.seed)
    unseen_pool = _task_pool(unseen, seeds)
    rows: list[dict[str, Any]] = []
    for label in LABELS:
        picked = _balanced(
            [r for r in unseen_pool if r["label"] == label], spec.unseen_per_label, ("task", "compound_id"), rng
        )
        rows += _plain(picked, "unseen_compound")
    used = {(r["compound_id"], r["task"], r["variant"]) for r in rows}

    trained_pairs = set(train.filter(pl.col("compound_id").is_not_null()).select("compound_id", "task").iter_rows())
    seen = compounds.filter(pl.col("compound_id").is_in(sorted({c for c, _ in trained_pairs})))
    seen_pool = _task_pool(seen, seeds, exclude=trained_pairs)
    for label in LABELS:
        picked = _balanced(
            [r for r in seen_pool if r["label"] == label], spec.seen_per_label, ("task", "compound_id"), rng
        )
        rows += _plain(picked, "seen_compound")

    if iupac is None:
        iupac = iupac_names(unseen)
    identifiers = {
        "smiles": {c: s for c, s in unseen.select("compound_id", "smiles").iter_rows() if s},
        "cas": {c: s for c, s in unseen.select("compound_id", "cas").iter_rows() if s},
        "iupac": iupac,
    }
    # Robustness questions avoid the exact (compound, task, phrasing) of the plain partition,
    # so a framed prompt never contains a plain prompt of the same suite verbatim.
    robust_pool = [r for r in unseen_pool if (r["compound_id"], r["task"], r["variant"]) not in used] or unseen_pool
    rows += _robustness(robust_pool, spec.robustness_per_label, identifiers, rng)
    return finalize(rows, suite)
