"""The curated compound catalog: validate data/catalog/compounds.csv and resolve each name offline.

    rows = read_catalog("data/catalog/compounds.csv")   # InputError names the bad row
    kept, quarantined = resolve_catalog(rows, source)   # InputError on a duplicate CAS
    stats = catalog_stats(kept, quarantined)
    check_unresolved(stats["in"], stats["quarantined"], max_frac=0.35, quarantine_path=...)

Each name is looked up in the PubChem subset bundled with the `chemicals` package (no network)
for its CAS number, formula and SMILES; RDKit canonicalises the SMILES. Rows are named by their
line in the CSV (the header is row 1), so an error message points at the line to edit.

Unresolved compounds are quarantined, not kept: every compound downstream has a CAS number
and a canonical SMILES, so seeds in `smiles` mode and the by-compound split never meet a
half-identified compound. Each quarantined row carries a `reason`:
  - "not found in chemicals database"
  - "name matches a different compound": chemicals answered through a fallback (formula or
    element parsing: 'HN1' comes back as imidogen), so the name is not among the record's names
  - "no CAS number", "no SMILES"
  - "RDKit cannot parse SMILES"
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from chemicals.identifiers import search_chemical
from rdkit import Chem, RDLogger

from libra.errors import InputError, LibraError

# RDKit logs every SMILES it rejects to stderr; a rejection is already a counted reason here.
RDLogger.DisableLog("rdApp.*")

CSV_COLUMNS = ("name", "class", "regulation", "group")
CLASSES = ("controlled", "common")
OUTPUT_COLUMNS = ("compound_id", "name", "class", "regulation", "group", "cas", "formula", "smiles")
QUARANTINE_COLUMNS = (*OUTPUT_COLUMNS, "reason")

NOT_FOUND = "not found in chemicals database"
WRONG_MATCH = "name matches a different compound"
NO_CAS = "no CAS number"
NO_SMILES = "no SMILES"
BAD_SMILES = "RDKit cannot parse SMILES"


@dataclass(frozen=True)
class CatalogRow:
    row: int  # line number in the CSV, header = 1
    name: str
    cls: str
    regulation: str
    group: str


@dataclass(frozen=True)
class Resolution:
    """What chemicals + RDKit made of a name; `reason` is None when it resolved."""

    cas: str | None
    formula: str | None
    smiles: str | None
    reason: str | None


def compound_id(name: str) -> str:
    """A stable slug of the name: lowercase, each run of non-alphanumerics becomes '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


def read_catalog(path: str | os.PathLike[str]) -> list[CatalogRow]:
    """Read and validate the catalog CSV; the first problem raises InputError naming its row."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} not found; pass the curated catalog CSV with --catalog")
    if not p.is_file():
        raise InputError(f"{p} is not a file; pass the curated catalog CSV with --catalog")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a BOM (Excel writes one) is not part of the first column name
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{p} row {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the catalog as UTF-8 (CSV UTF-8 in Excel)"
        ) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{p} is empty; it needs the header {','.join(CSV_COLUMNS)} and one row per compound")
        header = [h.strip() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in header]
        unknown = [c for c in header if c not in CSV_COLUMNS]
        if missing or unknown:
            raise InputError(
                f"{p} row 1: header is {','.join(header)}; it must be exactly {','.join(CSV_COLUMNS)} "
                f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})"
            )
        rows: list[CatalogRow] = []
        first_row_of: dict[str, int] = {}
        end = reader.line_num
        for fields in reader:
            line, end = end + 1, reader.line_num  # a quoted field may span lines: a row starts after the last
            if any("\n" in v or "\r" in v for v in fields):
                raise InputError(
                    f"{p} row {line}: a quote opened in this row is not closed (the field runs on to row {end}); "
                    'close it (names with commas are written "like, this") or remove it'
                )
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise InputError(
                    f"{p} row {line}: has {len(fields)} fields, expected {len(header)} ({','.join(header)}); "
                    "quote names that contain commas"
                )
            rec = {h: v.strip() for h, v in zip(header, fields)}
            row = CatalogRow(line, rec["name"], rec["class"], rec["regulation"], rec["group"])
            _check_row(p, row)
            key = _norm(row.name)
            if key in first_row_of:
                raise InputError(
                    f"{p} rows {first_row_of[key]} and {line}: duplicate name {row.name!r}; keep one of them"
                )
            first_row_of[key] = line
            rows.append(row)
    if not rows:
        raise InputError(f"{p} has a header but no compounds; add one row per compound")
    return rows


def _check_row(path: Path, row: CatalogRow) -> None:
    where = f"{path} row {row.row}"
    if not row.name:
        raise InputError(f"{where}: name is empty; fill it in or delete the row")
    if row.cls not in CLASSES:
        raise InputError(f"{where}: class {row.cls!r} is not one of {', '.join(CLASSES)}; fix the row")
    for column, value in (("regulation", row.regulation), ("group", row.group)):
        if not value:
            raise InputError(f"{where}: {column} is empty for {row.name!r}; fill it in")
    if (row.cls == "common") != (row.regulation == "none"):
        raise InputError(
            f"{where}: class {row.cls!r} with regulation {row.regulation!r}; common compounds have "
            "regulation 'none' and controlled ones a real regulation (CWC-1, DEA-II, explosive...)"
        )
    if not compound_id(row.name):
        raise InputError(f"{where}: name {row.name!r} has no letters or digits; use the compound's common name")


def resolve_name(name: str) -> Resolution:
    """Look the name up offline; canonicalise its SMILES. Never raises for an unknown name."""
    try:
        meta = search_chemical(name)
    except ValueError:
        return Resolution(None, None, None, NOT_FOUND)
    cas, formula = meta.CASs or None, meta.formula or None
    known_names = {_norm(n) for n in (*meta.synonyms, meta.common_name or "", meta.iupac_name or "")}
    if _norm(name) not in known_names:
        return Resolution(cas, formula, meta.smiles or None, WRONG_MATCH)
    if cas is None:
        return Resolution(None, formula, meta.smiles or None, NO_CAS)
    if not meta.smiles:
        return Resolution(cas, formula, None, NO_SMILES)
    mol = Chem.MolFromSmiles(meta.smiles)
    if mol is None:
        return Resolution(cas, formula, meta.smiles, BAD_SMILES)
    return Resolution(cas, formula, Chem.MolToSmiles(mol), None)


def resolve_catalog(rows: list[CatalogRow], source: str | os.PathLike[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Resolve every row: (kept, quarantined), both sorted by compound_id.

    Two resolved rows with one CAS number, or two names with one compound_id, raise InputError
    naming both rows: they would be one compound counted twice.
    """
    kept: list[dict[str, str | None]] = []
    quarantined: list[dict[str, str | None]] = []
    row_of_cas: dict[str | None, CatalogRow] = {}
    row_of_id: dict[str, CatalogRow] = {}
    for row in rows:
        cid = compound_id(row.name)
        if cid in row_of_id:
            other = row_of_id[cid]
            raise InputError(
                f"{source} rows {other.row} and {row.row}: {other.name!r} and {row.name!r} share the "
                f"compound_id {cid!r}; rename or remove one"
            )
        row_of_id[cid] = row
        res = resolve_name(row.name)
        record = {
            "compound_id": cid, "name": row.name, "class": row.cls, "regulation": row.regulation,
            "group": row.group, "cas": res.cas, "formula": res.formula, "smiles": res.smiles,
        }  # fmt: skip
        if res.reason is not None:
            quarantined.append({**record, "reason": res.reason})
            continue
        if res.cas in row_of_cas:
            other = row_of_cas[res.cas]
            raise InputError(
                f"{source} rows {other.row} and {row.row}: {other.name!r} and {row.name!r} are the same "
                f"compound (CAS {res.cas}); keep one of them"
            )
        row_of_cas[res.cas] = row
        kept.append(record)
    return _frame(kept, OUTPUT_COLUMNS), _frame(quarantined, QUARANTINE_COLUMNS)


def _frame(records: list[dict[str, str | None]], columns: tuple[str, ...]) -> pl.DataFrame:
    schema = dict.fromkeys(columns, pl.String)
    return pl.DataFrame(records, schema=schema, orient="row").sort("compound_id")


def catalog_stats(kept: pl.DataFrame, quarantined: pl.DataFrame) -> dict[str, Any]:
    """Counts that reconcile: in = out + quarantined, overall and per class."""
    out_by_class = Counter(kept["class"].to_list())
    q_by_class = Counter(quarantined["class"].to_list())
    by_class = {
        cls: {"in": out_by_class[cls] + q_by_class[cls], "out": out_by_class[cls], "quarantined": q_by_class[cls]}
        for cls in CLASSES
    }
    return {
        "in": kept.height + quarantined.height,
        "out": kept.height,
        "quarantined": quarantined.height,
        "by_reason": dict(sorted(Counter(quarantined["reason"].to_list()).items())),
        "by_class": by_class,
    }


def check_unresolved(n_in: int, n_q: int, max_frac: float, quarantine_path: str | os.PathLike[str]) -> None:
    """Raise LibraError when more than `max_frac` of the catalog's n_in compounds failed to resolve."""
    frac = n_q / n_in if n_in else 0.0
    if frac > max_frac:
        raise LibraError(
            f"catalog: {n_q} of {n_in} compounds ({frac:.1%}) did not resolve, above "
            f"catalog.max_unresolved_frac = {max_frac}; fix their names (listed with reasons in "
            f"{quarantine_path}) or raise catalog.max_unresolved_frac in params.yaml"
        )
