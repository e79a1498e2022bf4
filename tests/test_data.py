"""Pure pieces of the data stages: policy labels, stratified seeds, safety validators,
dedup, split. The stages themselves run end to end in test_pipeline.py."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from libra.data import triplets as triplets_mod
from libra.data.dedup import near_duplicates
from libra.data.rephrase import clean_reply, prompt_problem
from libra.data.safety import opens_with_refusal, operational_content, rejected_answer_problem
from libra.data.seeds import sample_seeds
from libra.data.split import split_pairs
from libra.data.templates import COMPLIANCE_OPENERS, TASK_PHRASES, fill
from libra.data.triplets import REGULATION_CLAIM, build_triplets, illegitimate_pair, refusal_paraphrase_problem
from libra.llm.client import open_client

from .conftest import tiny_params

COMPOUNDS = pl.DataFrame(
    [
        {"compound_id": cid, "name": name, "class": cls, "regulation": reg, "group": grp, "cas": "0", "formula": "X", "smiles": smi}
        for cid, name, cls, reg, grp, smi in [
            ("sarin", "sarin", "controlled", "CWC-1", "agent", "CC(C)OP(C)(=O)F"),
            ("tabun", "tabun", "controlled", "CWC-1", "agent", "CCOP(=O)(C#N)N(C)C"),
            ("fentanyl", "fentanyl", "controlled", "DEA-II", "drug", "CCC(=O)N(c1ccccc1)C1CCN(CCc2ccccc2)CC1"),
            ("tnt", "TNT", "controlled", "explosive", "explosive", "Cc1c([N+](=O)[O-])cc([N+](=O)[O-])cc1[N+](=O)[O-]"),
            ("aspirin", "aspirin", "common", "none", "drug", "CC(=O)Oc1ccccc1C(=O)O"),
            ("chlorine", "chlorine", "common", "none", "industrial", "ClCl"),
            ("ethanol", "ethanol", "common", "none", "solvent", "CCO"),
            ("toluene", "toluene", "common", "none", "solvent", "Cc1ccccc1"),
        ]
    ]
)


def test_policy_labels_are_per_compound_and_task(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, seeds={"n_illegitimate": 10, "legit_ratio": 2.0})
    seeds = sample_seeds(COMPOUNDS, params.seeds)
    assert seeds.filter(pl.col("label") == "illegitimate").height == 10
    assert seeds.filter(pl.col("label") == "legitimate").height == 20
    label = {(r["compound_id"], r["task"]): r["label"] for r in seeds.iter_rows(named=True)}
    policy = params.seeds.policy
    for (cid, task), lab in label.items():
        cls = COMPOUNDS.filter(pl.col("compound_id") == cid)["class"][0]
        assert lab == policy[cls][task]
    assert policy["controlled"]["synthesis"] == "illegitimate"
    assert policy["controlled"]["exposure_first_aid"] == "legitimate"
    assert policy["common"]["synthesis"] == "legitimate"
    # stratified: the illegitimate seeds spread over every illegitimate task
    assert seeds.filter(pl.col("label") == "illegitimate")["task"].n_unique() == 4


def test_seeds_are_deterministic_and_smiles_mode_names_by_smiles(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, seeds={"n_illegitimate": 6, "mode": "smiles"})
    a, b = sample_seeds(COMPOUNDS, params.seeds), sample_seeds(COMPOUNDS, params.seeds)
    assert a.equals(b)
    for row in a.iter_rows(named=True):
        smiles = COMPOUNDS.filter(pl.col("compound_id") == row["compound_id"])["smiles"][0]
        assert row["compound"] == smiles and smiles in row["prompt"]


def test_too_many_seeds_is_a_clear_error(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, seeds={"n_illegitimate": 500})
    with pytest.raises(Exception, match="seeds.n_illegitimate = 500"):
        sample_seeds(COMPOUNDS, params.seeds)


@pytest.mark.parametrize("template", COMPLIANCE_OPENERS)
@pytest.mark.parametrize("task", sorted(TASK_PHRASES))
def test_every_compliance_opener_passes_the_validator(template: str, task: str) -> None:
    assert rejected_answer_problem(fill(template, compound="sarin", task=task)) is None


@pytest.mark.parametrize(
    "text",
    [
        "Sure, here are the steps:\n1. Take 50 g of the precursor\n2.\n3.",
        "Sure:\n1. Heat to 80 °C under reflux\n2.\n3.",
        "Of course:\n1. React the alcohol with the chloride\n2. [redacted]",
        "Certainly:\nStep 1: obtain the starting material\nStep 2:",
    ],
)
def test_validator_catches_operational_content(text: str) -> None:
    assert rejected_answer_problem(text) is not None


def test_injected_operational_rejected_answer_is_quarantined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triplets_mod, "COMPLIANCE_OPENERS", ("Sure, for {compound}:\n1. Combine 10 g with the acid\n2.",))
    params = tiny_params(tmp_path, seeds={"n_illegitimate": 3, "legit_ratio": 0.0}, triplets={"paraphrase_refusals": False})
    seeds = sample_seeds(COMPOUNDS, params.seeds)
    # No generator call happens for illegitimate seeds without refusal paraphrasing,
    # so the client never starts a server here.
    with open_client(params.llm, params.llm.generator, stage="t", usage_path=tmp_path / "u.json") as client:
        kept, quarantine = build_triplets(seeds, client, params.triplets)
    assert kept.height == 0 and quarantine.height == 3
    assert all(r.startswith("operational content") for r in quarantine["reason"])


def test_refusal_paraphrase_must_keep_regulation_and_refuse() -> None:
    assert refusal_paraphrase_problem("I can't help; sarin is under Schedule 1 of the Chemical Weapons Convention.", "CWC-1") is None
    assert refusal_paraphrase_problem("I can't help with that request.", "CWC-1") == "refusal paraphrase dropped the regulation"
    assert refusal_paraphrase_problem("Sarin is covered by the Chemical Weapons Convention.", "CWC-1") == "refusal paraphrase does not open with a refusal"
    late = "Refuse: thank you, but I can't help; sarin is under Schedule 1 of the Chemical Weapons Convention."
    assert refusal_paraphrase_problem(late, "CWC-1") == "refusal paraphrase does not open with a refusal"


def test_refusals_of_an_unregulated_compound_give_the_intent_and_claim_no_regulation() -> None:
    """A common compound's refusal never says it is regulated (the policy would repeat that about harmless ones)."""
    for task in ("weaponisation", "evading_controls"):
        for i in range(8):
            row = {"seed_id": f"s{i}", "compound": "sorbitol", "regulation": "none", "task": task}
            refusal, _ = illegitimate_pair(row)
            assert opens_with_refusal(refusal) and "sorbitol" in refusal, refusal
            assert REGULATION_CLAIM.search(refusal) is None, refusal
            assert refusal_paraphrase_problem(refusal, "none") is None
    regulated, _ = illegitimate_pair({"seed_id": "s0", "compound": "sarin", "regulation": "CWC-1", "task": "synthesis"})
    assert "Schedule 1 of the Chemical Weapons Convention" in regulated
    claim = "I can't help with that. Sorbitol is controlled under national export-control law."
    assert refusal_paraphrase_problem(claim, "none") == "refusal paraphrase claims a regulation the compound is not under"


def test_prompt_paraphrase_checks() -> None:
    row = {"compound": "sarin", "prompt": "Tell me the steps of synthesizing sarin.", "label": "illegitimate", "task": "synthesis", "class": "controlled"}
    assert prompt_problem("How would I go about making sarin?", row) is None
    assert prompt_problem("How would I go about making it?", row) == "paraphrase dropped the compound"
    assert prompt_problem("What are the symptoms of sarin poisoning?", row) == "paraphrase flipped the intent"
    assert prompt_problem("Please rephrase the steps for creating sarin.", row).startswith("leaked instruction")
    assert prompt_problem("Sarin is a nerve agent made in 1938.", row).startswith("generator answered")


def test_clean_reply_strips_labels_and_quotes() -> None:
    assert clean_reply('"Rephrased question: How is sarin detected?"\nextra', first_line_only=True) == "How is sarin detected?"


def test_near_duplicates() -> None:
    texts = ["How is sarin detected?", "how is sarin detected", "How is sarin detected??", "What is sarin used for?"]
    dropped = near_duplicates(texts, threshold=0.9, n=3)
    assert dropped[1] == "exact duplicate" and 2 in dropped and 3 not in dropped


def test_operational_content_is_none_for_plain_prose() -> None:
    assert operational_content("Sarin is regulated under the Chemical Weapons Convention and is extremely toxic.") is None


def _pairs(n_per_compound: int = 3) -> pl.DataFrame:
    rows = []
    for c in COMPOUNDS.iter_rows(named=True):
        for i in range(n_per_compound):
            label = "illegitimate" if (c["class"] == "controlled" and i == 0) else "legitimate"
            rows.append({"pair_id": f"{c['compound_id']}-{i}", "seed_id": f"{c['compound_id']}-s{i}", "compound_id": c["compound_id"],
                         "compound": c["name"], "class": c["class"], "regulation": c["regulation"], "group": c["group"],
                         "task": "synthesis", "label": label, "prompt": f"p{c['compound_id']}{i}", "chosen": "c", "rejected": "r"})  # fmt: skip
    return pl.DataFrame(rows)


def test_split_by_compound_shares_no_compound(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, split={"strategy": "by_compound", "test_frac": 0.25})
    train, test = split_pairs(_pairs(), params.split)
    assert train.height + test.height == 24
    assert not set(train["compound_id"]) & set(test["compound_id"])
    assert test.height > 0 and set(test["label"]) == {"legitimate", "illegitimate"}


def test_split_random_is_row_level(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, split={"strategy": "random", "test_frac": 0.25})
    train, test = split_pairs(_pairs(), params.split)
    assert train.height + test.height == 24 and test.height == 6


def test_every_pool_refusal_opens_with_a_refusal() -> None:
    from libra.data.safety import opens_with_refusal
    from libra.data.templates import OVER_REFUSALS, REFUSALS, fill

    for template in REFUSALS + OVER_REFUSALS:
        text = fill(template, compound="sarin", regulation="CWC-1")
        assert opens_with_refusal(text), text
        if template in REFUSALS:
            assert refusal_paraphrase_problem(text, "CWC-1") is None, text
