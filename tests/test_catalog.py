"""Catalog: the curated CSV resolves offline; bad rows fail with one line naming the row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from rdkit import Chem

from libra.data.catalog import (
    NOT_FOUND,
    OUTPUT_COLUMNS,
    QUARANTINE_COLUMNS,
    WRONG_MATCH,
    catalog_stats,
    compound_id,
    read_catalog,
    resolve_catalog,
    resolve_name,
)

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "data" / "catalog" / "compounds.csv"
HEADER = "name,class,regulation,group\n"


def run_catalog(tmp_path: Path, csv_text: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
    csv_path = tmp_path / "compounds.csv"
    csv_path.write_text(csv_text)
    paths = {
        "out": tmp_path / "compounds.parquet",
        "quarantine": tmp_path / "quarantine.parquet",
        "stats": tmp_path / "stats.json",
    }
    args = ["--catalog", str(csv_path)] + [a for k, p in paths.items() for a in (f"--{k}", str(p))]
    env = {**os.environ, "LIBRA_PARAMS": str(ROOT / "params.yaml")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "catalog.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return proc, paths


# --- the curated catalog ----------------------------------------------------------------


@pytest.fixture(scope="module")
def curated() -> tuple[pl.DataFrame, pl.DataFrame]:
    return resolve_catalog(read_catalog(CATALOG), CATALOG)


def test_curated_catalog_resolves(curated: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    kept, quarantined = curated
    stats = catalog_stats(kept, quarantined)
    by_class = stats["by_class"]
    assert by_class["controlled"]["in"] >= 210 and by_class["common"]["in"] >= 210
    assert by_class["controlled"]["out"] >= 203  # achieved with chemicals 1.5.2
    assert by_class["common"]["out"] >= 215
    assert stats["in"] == stats["out"] + stats["quarantined"]
    for counts in by_class.values():
        assert counts["in"] == counts["out"] + counts["quarantined"]
    assert sum(stats["by_reason"].values()) == stats["quarantined"]
    assert stats["quarantined"] / stats["in"] <= 0.05


def test_curated_catalog_rows_are_complete(curated: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    kept, quarantined = curated
    assert tuple(kept.columns) == OUTPUT_COLUMNS
    assert tuple(quarantined.columns) == QUARANTINE_COLUMNS
    assert kept["compound_id"].to_list() == sorted(kept["compound_id"].to_list())
    assert kept["compound_id"].n_unique() == kept.height
    assert kept["cas"].n_unique() == kept.height
    assert kept.null_count().sum_horizontal().item() == 0
    for smiles in kept["smiles"]:
        assert Chem.MolToSmiles(Chem.MolFromSmiles(smiles)) == smiles  # already canonical
    assert set(kept["regulation"]) >= {"CWC-1", "CWC-2", "CWC-3", "DEA-I", "DEA-II", "explosive", "none"}
    assert set(kept.filter(pl.col("class") == "common")["regulation"]) == {"none"}
    # Names the brief calls out: hazardous but legitimate, and a known unresolvable toxin.
    common = set(kept.filter(pl.col("class") == "common")["name"])
    assert {"chlorine", "potassium cyanide", "sulfuric acid", "hydrofluoric acid"} <= common
    assert "ricin" in set(quarantined["name"])


# --- pure pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("sarin", "sarin"),
        ("N,N-Dimethyltryptamine", "n-n-dimethyltryptamine"),
        ("copper(II) sulfate", "copper-ii-sulfate"),
    ],
)
def test_compound_id_is_a_slug(name: str, slug: str) -> None:
    assert compound_id(name) == slug


def test_resolve_name() -> None:
    aspirin = resolve_name("aspirin")
    assert (aspirin.cas, aspirin.formula, aspirin.reason) == ("50-78-2", "C9H8O4", None)
    assert aspirin.smiles == Chem.MolToSmiles(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O"))
    assert resolve_name("ricin").reason == NOT_FOUND
    # chemicals parses 'HN1' as a formula (imidogen); it must not pass for nitrogen mustard HN-1.
    assert resolve_name("HN1").reason == WRONG_MATCH


# --- the stage --------------------------------------------------------------------------


def test_stage_writes_outputs_and_quarantine(tmp_path: Path) -> None:
    proc, paths = run_catalog(
        tmp_path, HEADER + "sarin,controlled,CWC-1,agent\nricin,controlled,CWC-1,toxin\n"
        "aspirin,common,none,drug\nwater,common,none,solvent\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(paths["stats"].read_text())
    assert (stats["in"], stats["out"], stats["quarantined"]) == (4, 3, 1)
    assert stats["by_reason"] == {NOT_FOUND: 1}
    assert stats["by_class"]["controlled"] == {"in": 2, "out": 1, "quarantined": 1}
    kept = pl.read_parquet(paths["out"])
    assert kept["compound_id"].to_list() == ["aspirin", "sarin", "water"]
    quarantined = pl.read_parquet(paths["quarantine"])
    assert quarantined.select("name", "reason").rows() == [("ricin", NOT_FOUND)]


def test_stage_writes_empty_quarantine(tmp_path: Path) -> None:
    proc, paths = run_catalog(tmp_path, HEADER + "aspirin,common,none,drug\n")
    assert proc.returncode == 0, proc.stderr
    quarantined = pl.read_parquet(paths["quarantine"])
    assert quarantined.height == 0
    assert tuple(quarantined.columns) == QUARANTINE_COLUMNS


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("aspirin,common,none,drug\nsarin,contrlled,CWC-1,agent\n",
         "row 3: class 'contrlled' is not one of controlled, common; fix the row"),
        ("aspirin,common,none,drug\nacetylsalicylic acid,common,none,drug\n",
         "rows 2 and 3: 'aspirin' and 'acetylsalicylic acid' are the same compound (CAS 50-78-2)"),
        ("aspirin,common,none,drug\n,common,none,drug\n", "row 3: name is empty"),
        ("Aspirin,common,none,drug\naspirin,common,none,drug\n", "rows 2 and 3: duplicate name 'aspirin'"),
        ("aspirin,common,,drug\n", "row 2: regulation is empty"),
        ("sarin,controlled,none,agent\n", "row 2: class 'controlled' with regulation 'none'"),
        ("aspirin,common,none\n", "row 2: has 3 fields, expected 4"),
    ],
    ids=["unknown-class", "duplicate-cas", "empty-name", "duplicate-name", "empty-regulation", "class-regulation", "fields"],
)  # fmt: skip
def test_bad_row_fails_with_one_line(tmp_path: Path, rows: str, expected: str) -> None:
    proc, paths = run_catalog(tmp_path, HEADER + rows)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'compounds.csv'} row")
    assert expected in lines[0]
    assert not paths["out"].exists()


def test_bad_header_names_the_missing_column(tmp_path: Path) -> None:
    proc, _ = run_catalog(tmp_path, "name,class,regulation\naspirin,common,none\n")
    assert proc.returncode == 2
    assert "row 1: header is name,class,regulation" in proc.stderr
    assert "missing: group" in proc.stderr


def test_too_many_unresolved_fails_naming_the_param(tmp_path: Path) -> None:
    proc, paths = run_catalog(
        tmp_path,
        HEADER + "ricin,controlled,CWC-1,toxin\nTATP,controlled,explosive,explosive\naspirin,common,none,drug\n",
    )
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert "2 of 3 compounds (66.7%) did not resolve" in line
    assert "catalog.max_unresolved_frac = 0.35" in line
    assert pl.read_parquet(paths["quarantine"]).height == 2  # kept so the user can see what to fix
    assert not paths["out"].exists()
