"""The augment stage: self-distilled legitimate answers, benign contrast pairs, framed prompts.

The pure builder runs with a recording `generate`, so the tests see exactly which prompts
the policy is asked; the stage script runs as a subprocess on a tiny real model.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError
import yaml

from libra.config import SeedsParams
from libra.data.augment import OUT_COLUMNS, AugmentParams, build_augmented, catalog_candidates, distill_prompts
from libra.data.reserve import reserved_for_eval
from libra.data.contrast import all_contrast_prompts, contrast_prompts
from libra.data.framings import BENIGN_PARTS, KINDS, TEMPLATES, framed_prompts, wrap
from libra.data.safety import opens_with_refusal, rejected_answer_problem
from libra.data.templates import (
    COMPLIANCE_OPENERS, INTENT_PHRASES, INTENT_REFUSALS, NATURAL_OPENERS, OVER_REFUSALS, REFUSALS, TASK_INTENT_WORDS, TASK_PROMPTS,
    TASK_VARIANTS, fill, refusal_templates,
)  # fmt: skip
from libra.data.triplets import pick
from libra.eval.suites import unseen_compounds
from tests.conftest import ROOT, TINY_PROFILE, subprocess_env

XSTEST = ROOT.parent / "shared" / "xstest" / "xstest_prompts.csv"
if not XSTEST.exists():
    XSTEST = Path("/work/shared/xstest/xstest_prompts.csv")


def grams(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@pytest.fixture(scope="module")
def xstest_grams() -> set[tuple[str, ...]]:
    if not XSTEST.exists():
        pytest.skip(f"{XSTEST} not found")
    with XSTEST.open(newline="") as f:
        return set().union(*(grams(r["prompt"]) for r in csv.DictReader(f)))


COMPOUNDS = [
    # compound_id, name, class, regulation, group, smiles, cas
    ("sarin", "sarin", "controlled", "CWC-1", "agent", "CC(C)OP(C)(=O)F", "107-44-8"),
    ("fentanyl", "fentanyl", "controlled", "DEA-II", "opioid", "CCC(=O)N(c1ccccc1)C1CCN(CCc2ccccc2)CC1", "437-38-7"),
    ("aspirin", "aspirin", "common", "none", "analgesic", "CC(=O)Oc1ccccc1C(=O)O", "50-78-2"),
    ("caffeine", "caffeine", "common", "none", "stimulant", "Cn1c(=O)c2c(ncn2C)n(C)c1=O", "58-08-2"),
]
POLICY = {  # a slice of the dual-use table
    ("controlled", "synthesis"): "illegitimate", ("controlled", "exposure_first_aid"): "legitimate",
    ("common", "synthesis"): "legitimate", ("common", "weaponisation"): "illegitimate",
}  # fmt: skip


def make_tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Training pairs as the split stage writes them (two pairs per seed), and the compounds table."""
    rows = []
    for cid, name, cls, reg, group, _, _ in COMPOUNDS:
        for (pcls, task), label in POLICY.items():
            if pcls != cls:
                continue
            seed_id = f"{cid}-{task}"
            prompt = TASK_PROMPTS[task][0].format(compound=name)
            for j in range(2):
                if label == "illegitimate":
                    chosen = fill(pick(refusal_templates(reg), seed_id, j), compound=name, regulation=reg, task=task)
                    rejected = fill(pick(COMPLIANCE_OPENERS, seed_id, j), compound=name, task=task)
                else:
                    chosen = f"Here is a careful answer about {name}, version {j}, for a legitimate question."
                    rejected = fill(pick(OVER_REFUSALS, seed_id, j), compound=name)
                rows.append({
                    "pair_id": f"{seed_id}-{j}", "seed_id": seed_id, "compound_id": cid, "compound": name,
                    "class": cls, "regulation": reg, "group": group, "task": task, "label": label,
                    "prompt": prompt, "chosen": chosen, "rejected": rejected,
                })
    compounds = pl.DataFrame(
        [dict(zip(("compound_id", "name", "class", "regulation", "group", "smiles", "cas"), c, strict=True)) for c in COMPOUNDS]
    )
    return pl.DataFrame(rows), compounds


class Recorder:
    """A stand-in policy that records every prompt it is asked and answers plainly (or refuses some)."""

    def __init__(self, refuse: set[str] = frozenset()) -> None:
        self.asked: list[str] = []
        self.refuse = refuse

    def __call__(self, prompts: list[str]) -> list[str]:
        self.asked.extend(prompts)
        return [
            "I'm sorry, but I can't help with that." if p in self.refuse else f"A plain, helpful answer to this request, number {i}."
            for i, p in enumerate(prompts)
        ]


# --- templates -------------------------------------------------------------------------


def test_contrast_prompts_are_many_distinct_and_balanced() -> None:
    pool = all_contrast_prompts()
    assert len({r["prompt"] for r in pool}) >= 150
    picked = contrast_prompts(50, seed=0)
    assert len(picked) == 50 and picked == contrast_prompts(50, seed=0)
    per_category = pl.DataFrame(picked).group_by("category").len()["len"].to_list()
    assert max(per_category) - min(per_category) <= 1


def test_contrast_prompts_share_no_6gram_with_xstest(xstest_grams: set) -> None:
    shared = {r["prompt"]: grams(r["prompt"]) & xstest_grams for r in all_contrast_prompts()}
    assert not {p: g for p, g in shared.items() if g}


def test_framings_share_no_6gram_with_xstest(xstest_grams: set) -> None:
    texts = list(BENIGN_PARTS)
    for kind, templates in TEMPLATES.items():
        for template in templates:
            for task, prompts in TASK_PROMPTS.items():
                for k, prompt in enumerate(prompts):
                    q = prompt.format(compound="aspirin")
                    if kind == "identifier":
                        texts.append(q.replace("aspirin", template.format(smiles="CC(=O)Oc1ccccc1C(=O)O", cas="50-78-2")))
                    else:
                        texts.append(wrap(template, q, f"{task}{k}"))
    shared = {t: grams(t) & xstest_grams for t in texts}
    assert not {t: g for t, g in shared.items() if g}


def test_framed_prompts_are_capped_distinct_kinds() -> None:
    row = {"seed_id": "s1", "prompt": "Tell me the steps of synthesizing sarin.", "compound": "sarin"}
    out = framed_prompts(row, smiles="CC(C)OP(C)(=O)F", cas="107-44-8", n=3)
    assert len(out) == 3 and len({k for k, _ in out}) == 3
    everything = framed_prompts(row, smiles=None, cas=None, n=len(KINDS))
    assert "identifier" not in {k for k, _ in everything}  # no SMILES or CAS: that framing is skipped
    ident = framed_prompts(row, smiles="CC(C)OP(C)(=O)F", cas="107-44-8", n=1, kinds=["identifier"])
    assert ident and "sarin" not in ident[0][1] and ("CC(C)OP(C)(=O)F" in ident[0][1] or "107-44-8" in ident[0][1])


# --- builder ---------------------------------------------------------------------------


def test_policy_is_never_asked_an_illegitimate_prompt() -> None:
    train, compounds = make_tables()
    illegit = set(train.filter(pl.col("label") == "illegitimate")["prompt"].to_list())
    policy = Recorder()
    out, _, stats = build_augmented(train, compounds, AugmentParams(catalog_compounds=0, contrast=20), policy)
    assert policy.asked and not set(policy.asked) & illegit
    assert stats["self_answers"]["illegitimate_prompts_generated"] == 0
    # Nothing the policy wrote is the chosen (or rejected) answer of an illegitimate row.
    written = set(Recorder()(policy.asked))
    bad = out.filter((pl.col("label") == "illegitimate") & (pl.col("chosen").is_in(written) | pl.col("rejected").is_in(written)))
    assert bad.height == 0


def test_builder_sources_labels_and_counts() -> None:
    train, compounds = make_tables()
    out, quarantine, stats = build_augmented(train, compounds, AugmentParams(catalog_compounds=0, contrast=20, framed_per_seed=2, task_variants=0), Recorder())
    assert out.columns == OUT_COLUMNS
    assert stats["reconciles"] and stats["in"] == stats["out"] + stats["quarantined"]
    assert {s for s, n in stats["by_source"].items() if n} == {"pairs", "self_distill", "contrast", "framed"}
    assert set(out.filter(pl.col("source") == "pairs")["label"].to_list()) == {"illegitimate"}
    assert out.filter(pl.col("source") == "contrast").height == 20
    assert set(out.filter(pl.col("source").is_in(["self_distill", "contrast"]))["label"].to_list()) == {"legitimate"}
    framed = out.filter(pl.col("source") == "framed")
    assert set(framed["label"].to_list()) == {"legitimate", "illegitimate"}
    assert framed.group_by("seed_id").len()["len"].max() <= 2
    for r in out.filter(pl.col("label") == "illegitimate").iter_rows(named=True):
        assert opens_with_refusal(r["chosen"]) and rejected_answer_problem(r["rejected"]) is None
    assert out["pair_id"].n_unique() == out.height
    assert "by_task" in stats["output"] and stats["output"]["by_task"]["general"]["share_legitimate"] == 1.0


def test_task_variants_reword_each_seeds_own_request_and_keep_its_answers() -> None:
    train, compounds = make_tables()
    params = AugmentParams(catalog_compounds=0, contrast=0, framed=False, task_variants=3)
    out, _, stats = build_augmented(train, compounds, params, Recorder())
    off, _, _ = build_augmented(train, compounds, params.model_copy(update={"task_variants": 0}), Recorder())
    reworded = out.filter(pl.col("source") == "reworded")
    assert stats["reconciles"] and stats["by_source"]["reworded"] == reworded.height
    assert reworded.height == 3 * train["seed_id"].n_unique()
    assert out.filter(pl.col("source") != "reworded").sort("pair_id").equals(off.sort("pair_id"))
    seeded = off.select("seed_id", "task", "label", "compound", "chosen", "rejected")
    for r in reworded.iter_rows(named=True):
        # Its own task's bank, its own compound, and a (chosen, rejected) of its own seed.
        assert r["prompt"] in {t.format(compound=r["compound"]) for t in TASK_VARIANTS[r["task"]]}
        assert r["prompt"] not in set(train["prompt"].to_list())
        own = seeded.filter(pl.col("seed_id") == r["seed_id"])
        assert set(own["task"].to_list()) == {r["task"]} and set(own["label"].to_list()) == {r["label"]}
        assert (r["chosen"], r["rejected"]) in set(zip(own["chosen"].to_list(), own["rejected"].to_list(), strict=True))
    assert reworded.group_by("seed_id").agg(pl.col("prompt").n_unique())["prompt"].to_list() == [3] * reworded["seed_id"].n_unique()
    assert set(reworded["label"].to_list()) == {"legitimate", "illegitimate"}


def test_task_variant_bank_keeps_every_illegitimate_wording_intent_bearing() -> None:
    assert set(TASK_VARIANTS) == set(TASK_PROMPTS)
    for task, words in TASK_INTENT_WORDS.items():
        for template in TASK_VARIANTS[task]:
            assert any(w in template.lower() for w in words), (task, template)
    for task, pool in TASK_VARIANTS.items():
        assert len(set(pool)) == len(pool) == 8 and not set(pool) & set(TASK_PROMPTS[task])


def test_refused_self_answer_is_quarantined_and_the_pair_keeps_its_answer() -> None:
    train, compounds = make_tables()
    target = train.filter(pl.col("label") == "legitimate")["prompt"][0]
    out, quarantine, stats = build_augmented(
        train, compounds, AugmentParams(catalog_compounds=0, contrast=0, framed=False, task_variants=0), Recorder(refuse={target})
    )
    kept = out.filter(pl.col("prompt") == target)
    assert kept.height == 2 and set(kept["source"].to_list()) == {"pairs"}
    q = quarantine.filter(pl.col("field") == "self_answer")
    assert q.height == 1 and q["reason"][0].startswith("self answer is a refusal")
    assert stats["self_answers"]["chemistry_quarantined"] == 1 and stats["reconciles"]


def test_levers_off_give_the_input_pairs() -> None:
    train, compounds = make_tables()
    policy = Recorder()
    out, quarantine, stats = build_augmented(
        train, compounds, AugmentParams(catalog_compounds=0, self_distill_legit=False, contrast=0, framed=False, task_variants=0), policy
    )
    assert not policy.asked and quarantine.height == 0
    assert sorted(out["pair_id"].to_list()) == sorted(train["pair_id"].to_list())
    assert set(out["source"].to_list()) == {"pairs"}


def test_a_prompt_with_both_labels_is_never_sent() -> None:
    train, compounds = make_tables()
    illegit = train.filter(pl.col("label") == "illegitimate")["prompt"][0]
    clash = train.head(1).with_columns(pl.lit("x").alias("pair_id"), pl.lit("legitimate").alias("label"), pl.lit(illegit).alias("prompt"))
    with pytest.raises(Exception, match="both labels"):
        distill_prompts(pl.concat([train, clash]), [], AugmentParams())


# --- catalog lever ---------------------------------------------------------------------


def default_seeds() -> SeedsParams:
    return SeedsParams(**yaml.safe_load((ROOT / "params.yaml").read_text())["seeds"])


def catalog_table(n: int = 60) -> pl.DataFrame:
    """n made-up catalog compounds, classes alternating, plus the four of COMPOUNDS."""
    rows = [
        {"compound_id": f"cmp-{i:03d}", "name": f"compound {i}", "class": "controlled" if i % 2 else "common",
         "regulation": "CWC-2" if i % 2 else "none", "group": "g", "smiles": None, "cas": None}
        for i in range(n)
    ]  # fmt: skip
    _, known = make_tables()
    return pl.concat([known, pl.DataFrame(rows, schema=known.schema)])


def test_catalog_candidates_balance_labels_within_class_and_task() -> None:
    compounds = catalog_table()
    rows = catalog_candidates(compounds, {"sarin", "aspirin"}, 20, default_seeds(), seed=0)
    df = pl.DataFrame(rows)
    assert df["compound_id"].n_unique() == 20 and df.height == 40
    assert not set(df["compound_id"].to_list()) & {"sarin", "aspirin"}
    assert not any(reserved_for_eval(c) for c in df["compound_id"].to_list())
    # One pair of each label per compound, and each class half of each label.
    assert df.group_by("compound_id").agg(pl.col("label").n_unique())["label"].min() == 2
    assert df.group_by("class").len()["len"].to_list() == [20, 20]
    # The class-dependent tasks are used: synthesis/acquisition occur with both labels.
    dual = df.filter(pl.col("task").is_in(["synthesis", "acquisition"]))
    assert set(dual["label"].to_list()) == {"legitimate", "illegitimate"}
    assert all(r["compound"] in r["prompt"] for r in rows)
    assert rows == catalog_candidates(compounds, {"sarin", "aspirin"}, 20, default_seeds(), seed=0)


def test_catalog_compounds_are_never_the_suites_unseen_compounds() -> None:
    train, _ = make_tables()
    compounds = catalog_table(200)
    test = train.filter(pl.col("compound_id") == "caffeine")
    train = train.filter(pl.col("compound_id") != "caffeine")
    params = AugmentParams(contrast=0, framed=False, catalog_compounds=200)
    out, _, _ = build_augmented(train, compounds, params, Recorder(), seeds=default_seeds(), test=test)
    trained = set(out.filter(pl.col("source") == "catalog")["compound_id"].to_list())
    assert trained and "caffeine" not in trained
    unseen = set(unseen_compounds(compounds, train, test, 200, seed=0)["compound_id"].to_list())
    assert unseen and not trained & unseen


def test_catalog_lever_asks_the_policy_only_legitimate_prompts() -> None:
    train, _ = make_tables()
    compounds = catalog_table()
    policy = Recorder()
    params = AugmentParams(contrast=0, framed=False, catalog_compounds=10)
    out, _, stats = build_augmented(train, compounds, params, policy, seeds=default_seeds(), test=train.head(0))
    catalog = out.filter(pl.col("source") == "catalog")
    assert catalog.height == 20 and stats["by_source"]["catalog"] == 20 and stats["reconciles"]
    illegit = catalog.filter(pl.col("label") == "illegitimate")
    assert not set(illegit["prompt"].to_list()) & set(policy.asked)
    assert set(catalog.filter(pl.col("label") == "legitimate")["prompt"].to_list()) <= set(policy.asked)
    for r in illegit.iter_rows(named=True):
        assert opens_with_refusal(r["chosen"]) and rejected_answer_problem(r["rejected"]) is None
    with pytest.raises(Exception, match="--test"):
        build_augmented(train, compounds, params, Recorder())


def test_mirrored_refusals_are_the_templates_illegitimate_pairs_prefer() -> None:
    train, compounds = make_tables()
    params = AugmentParams(contrast=10, framed_per_seed=1, mirror_refusals=True, catalog_compounds=4, task_variants=0)
    out, _, stats = build_augmented(train, catalog_table(), params, Recorder(), seeds=default_seeds(), test=train.head(0))
    refusal_forms = [
        re.escape(t).replace(r"\{compound\}", ".+").replace(r"\{regulation\}", ".+").replace(r"\{intent\}", ".+")
        for t in REFUSALS + INTENT_REFUSALS
    ]
    legit = out.filter(pl.col("label") == "legitimate")
    assert set(legit["source"].to_list()) == {"self_distill", "contrast", "framed", "catalog"}
    for r in legit.iter_rows(named=True):
        assert any(re.fullmatch(f, r["rejected"]) for f in refusal_forms), r["rejected"]
        assert (r["compound"] or "") in r["rejected"]
        # the reason fits the request: a legitimate task is never called "making X for this purpose"
        assert "for this purpose" not in r["rejected"] or r["task"] in INTENT_PHRASES, (r["task"], r["rejected"])
    for r in out.filter(pl.col("label") == "illegitimate").iter_rows(named=True):
        assert any(re.fullmatch(f, r["chosen"]) for f in refusal_forms)
    off, _, _ = build_augmented(train, compounds, AugmentParams(catalog_compounds=0, contrast=10, framed_per_seed=1, task_variants=0), Recorder())
    assert not any(any(re.fullmatch(f, t) for f in refusal_forms) for t in off.filter(pl.col("label") == "legitimate")["rejected"])
    assert stats["reconciles"]


def test_natural_openers_are_safe_and_replace_every_illegitimate_rejected() -> None:
    train, _ = make_tables()
    params = AugmentParams(contrast=0, framed_per_seed=1, natural_openers=True, catalog_compounds=4, task_variants=0)
    out, _, stats = build_augmented(train, catalog_table(), params, Recorder(), seeds=default_seeds(), test=train.head(0))
    illegit = out.filter(pl.col("label") == "illegitimate")
    assert set(illegit["source"].to_list()) == {"pairs", "framed", "catalog"} and stats["reconciles"]
    for r in illegit.iter_rows(named=True):
        assert r["compound"] in r["rejected"] and "\n" not in r["rejected"], r["rejected"]
        assert rejected_answer_problem(r["rejected"]) is None and not opens_with_refusal(r["rejected"])
    for template in NATURAL_OPENERS:
        for task in TASK_PROMPTS:
            assert rejected_answer_problem(fill(template, compound="sarin", task=task)) is None


# --- stage -----------------------------------------------------------------------------


def run_augment(tmp_path: Path, base: Path, augment: dict) -> subprocess.CompletedProcess[str]:
    train, compounds = make_tables()
    train.write_parquet(tmp_path / "train.parquet")
    train.head(0).write_parquet(tmp_path / "test.parquet")
    compounds.write_parquet(tmp_path / "compounds.parquet")
    profile = yaml.safe_load(TINY_PROFILE.read_text())
    profile["augment"] = augment
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(profile))
    env = subprocess_env(LIBRA_PARAMS=str(tmp_path / "params.yaml"), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "augment.py"), "--train", tmp_path / "train.parquet", "--test", tmp_path / "test.parquet",
         "--compounds", tmp_path / "compounds.parquet", "--model", base, "--out", tmp_path / "train_dpo.parquet",
         "--quarantine", tmp_path / "quarantine.parquet", "--stats", tmp_path / "augment.json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_augment_stage_on_a_tiny_model(tmp_path: Path, tiny_base: Path) -> None:
    proc = run_augment(tmp_path, tiny_base, {"contrast": 10, "framed_per_seed": 2, "max_new_tokens": 16, "batch_size": 8})
    assert proc.returncode == 0, proc.stderr
    out = pl.read_parquet(tmp_path / "train_dpo.parquet")
    quarantine = pl.read_parquet(tmp_path / "quarantine.parquet")
    stats = json.loads((tmp_path / "augment.json").read_text())
    assert out.columns == OUT_COLUMNS and out["pair_id"].n_unique() == out.height
    assert stats["in"] == stats["out"] + stats["quarantined"] == out.height + stats["quarantined"]
    assert quarantine.height == stats["quarantined"] + stats["self_answers"]["chemistry_quarantined"]
    assert stats["self_answers"]["illegitimate_prompts_generated"] == 0
    # Random weights write token soup; some may fail the checks, but every lever shows up.
    assert stats["by_source"]["framed"] > 0 and stats["by_source"]["reworded"] > 0
    dropped_contrast = quarantine.filter(pl.col("seed_id").str.starts_with("contrast-") & (pl.col("field") == "chosen"))
    assert stats["by_source"]["contrast"] + dropped_contrast.height == 10
    assert stats["self_answers"]["prompts_generated"] == 4 + 10  # four legitimate training prompts + contrast
    assert set(out.filter(pl.col("source").is_in(["self_distill", "contrast"]))["label"].to_list()) <= {"legitimate"}
    illegit = out.filter(pl.col("label") == "illegitimate")
    assert set(illegit["source"].to_list()) <= {"pairs", "framed", "reworded"}
    assert all(opens_with_refusal(t) for t in illegit["chosen"].to_list())


def test_augment_stage_bad_param_is_one_line(tmp_path: Path, tiny_base: Path) -> None:
    proc = run_augment(tmp_path, tiny_base, {"contrast": -1})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "augment.contrast" in proc.stderr


def test_status_preamble_opens_class_dependent_pairs_with_the_true_status_and_rejects_the_false_one() -> None:
    train, _ = make_tables()
    params = AugmentParams(contrast=10, framed_per_seed=1, catalog_compounds=10, task_variants=1)
    off, _, _ = build_augmented(train, catalog_table(), params, Recorder(), seeds=default_seeds(), test=train.head(0))
    out, _, stats = build_augmented(
        train, catalog_table(), params.model_copy(update={"status_preamble": True}), Recorder(), seeds=default_seeds(), test=train.head(0)
    )
    assert stats["reconciles"] and out.height == off.height
    dual = out.filter(pl.col("task").is_in(["synthesis", "acquisition"]))
    assert set(dual["class"].to_list()) == {"controlled", "common"} and set(dual["source"].to_list()) >= {"pairs", "catalog", "framed"}
    for r in dual.iter_rows(named=True):
        name = r["compound"][:1].upper() + r["compound"][1:]
        controlled, common = f"{name} is a controlled chemical. ", f"{name} is not a controlled chemical. "
        true, false = (controlled, common) if r["class"] == "controlled" else (common, controlled)
        assert r["chosen"].startswith(true) and r["rejected"].startswith(false), (r["chosen"], r["rejected"])
        # the label follows the class here: controlled synthesis is refused, common synthesis answered
        assert (r["label"] == "illegitimate") == (r["class"] == "controlled")
        if r["label"] == "illegitimate":
            assert opens_with_refusal(r["chosen"][len(true):]) and rejected_answer_problem(r["rejected"]) is None
    rest = out.filter(~pl.col("task").is_in(["synthesis", "acquisition"]))
    assert rest.height and not any("controlled chemical." in t for t in rest["chosen"].to_list() + rest["rejected"].to_list())
    assert sorted(rest["pair_id"].to_list()) == sorted(off.filter(~pl.col("task").is_in(["synthesis", "acquisition"]))["pair_id"].to_list())
    with pytest.raises(Exception, match="seeds policy"):
        build_augmented(train, catalog_table(), AugmentParams(catalog_compounds=0, status_preamble=True), Recorder())


def test_status_pairs_put_the_loss_on_the_status_sentence_alone() -> None:
    train, _ = make_tables()
    params = AugmentParams(contrast=0, framed_per_seed=1, catalog_compounds=10, task_variants=1, status_preamble=True)
    prefixed, _, _ = build_augmented(train, catalog_table(), params, Recorder(), seeds=default_seeds(), test=train.head(0))
    out, _, stats = build_augmented(
        train, catalog_table(), params.model_copy(update={"status_pairs": True}), Recorder(), seeds=default_seeds(), test=train.head(0)
    )
    alone = out.filter(pl.col("source") == "status")
    dual_prompts = set(prefixed.filter(pl.col("task").is_in(["synthesis", "acquisition"]))["prompt"].to_list())
    assert stats["reconciles"] and stats["by_source"]["status"] == alone.height == len(dual_prompts)
    assert set(alone["prompt"].to_list()) == dual_prompts and out.height == prefixed.height + alone.height
    for r in alone.iter_rows(named=True):
        true, false = r["chosen"].split(". ", 1), r["rejected"].split(". ", 1)
        assert true[1] == false[1] and true[0] != false[0]  # only the status sentence differs
        assert true[0].endswith("controlled chemical") and false[0].endswith("controlled chemical")
        assert ("not a controlled" in true[0]) == (r["class"] == "common") != ("not a controlled" in false[0])
    with pytest.raises(Exception, match="status_pairs needs augment.status_preamble"):
        build_augmented(train, catalog_table(), params.model_copy(update={"status_preamble": False, "status_pairs": True}), Recorder(),
                        seeds=default_seeds(), test=train.head(0))  # fmt: skip
    with pytest.raises(ValidationError, match="status_pairs needs status_preamble: true"):
        AugmentParams(status_pairs=True)
