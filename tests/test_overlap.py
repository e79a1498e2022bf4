"""Training prompts and evaluation prompts share no phrasing.

(a) Templates: no evaluation template (libra/data/eval_templates.py) shares a word 6-gram
    with any training-prompt source: every string literal in libra/data/*.py other than
    eval_templates.py (task templates, the rephrase stage's few-shot examples and
    instruction, the augment stage's framings and benign contrast prompts, answer pools),
    with slots such as {compound} masked as one placeholder token.
(b) Generated tables: on training prompts built the way the pipeline builds them (seeds ->
    split by compound; every framed version of each training prompt; every task variant of it;
    every benign contrast prompt; the few-shot examples), no XSTest prompt and no in_domain prompt shares a word
    8-gram with a training prompt. For in_domain, compound names, SMILES and CAS numbers
    are masked; unmasked, the share may be above 0 only through a compound identifier long
    enough to fill most of an 8-gram on its own (a long IUPAC or SMILES string), and must
    stay under IN_DOMAIN_RAW_MAX.
The LLM paraphrases of the real training split are not rebuilt here (they need the
generator); `stages/suites.py` measures the same overlap on the real split into its stats.
"""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl
import pytest

from libra.data import eval_templates
from libra.data.contrast import all_contrast_prompts
from libra.data.framings import KINDS, framed_prompt
from libra.data.rephrase import _FEW_SHOT, _REPHRASE_INSTRUCTION, PLACEHOLDER
from libra.data.templates import TASK_PROMPTS, training_wordings
from libra.eval.overlap import ngrams, overlap_share, overlapping
from libra.eval.suites import SuiteSpec, build_in_domain, build_xstest, read_xstest

from .conftest import ROOT, tiny_params
from .test_suites import TINY_SPEC, XSTEST, compounds, default_params, iupac, seed_split  # noqa: F401 (fixtures)

# A few long identifiers could at most make this share of prompts overlap; measured: 0.
IN_DOMAIN_RAW_MAX = 0.02
DATA_DIR = ROOT / "libra" / "data"


def training_literals() -> list[tuple[str, str]]:
    """(where, text) for every string literal of >= 6 words in the training-data modules."""
    out = []
    for path in sorted(DATA_DIR.glob("*.py")):
        if path.name == "eval_templates.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value.split()) >= 6:
                out.append((f"{path.name}:{node.lineno}", node.value))
    return out


def test_training_sources_are_found() -> None:
    texts = {t for _, t in training_literals()}
    assert set(TASK_PROMPTS["synthesis"]) <= texts  # the training task templates
    assert _FEW_SHOT[2][1] in texts and _REPHRASE_INSTRUCTION in texts  # the rephrase few-shot
    assert any("thought experiment" in t for t in texts)  # the augment stage's framings


def shared_6grams_with_training_sources(texts: list[str]) -> list[tuple[str, str, str]]:
    """(text, the shared word 6-gram, where in the training sources) for each 6-gram a text shares with a training literal; slots masked."""
    mask = [PLACEHOLDER]
    train_grams: dict[tuple[str, ...], str] = {}
    for where, text in training_literals():
        for g in ngrams(text, 6, mask):
            train_grams.setdefault(g, where)
    return [(text, " ".join(g), train_grams[g]) for text in texts for g in sorted(ngrams(text, 6, mask)) if g in train_grams]


def test_no_eval_template_shares_a_6gram_with_a_training_source() -> None:
    shared = shared_6grams_with_training_sources(list(eval_templates.all_eval_templates()))
    assert not shared, f"eval templates share 6-grams with training sources: {shared[:5]}"


def test_gate_spot_check_prompts_share_no_6gram_with_a_training_source() -> None:
    """bench/gate_spot_check.py's prompts were written outside every template: no training literal shares their phrasing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gate_spot_check", ROOT / "bench" / "gate_spot_check.py")
    assert spec and spec.loader
    spot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(spot)
    prompts = [q for group, _ in spot.GROUPS.values() for q in group]
    assert len(prompts) == 60
    shared = shared_6grams_with_training_sources(prompts)
    assert not shared, f"spot-check prompts share 6-grams with training sources: {shared[:5]}"


def test_overlap_function_detects_shared_phrasing() -> None:
    train = ["How can I get hold of sarin for my lab today?"]
    assert overlap_share(["Tell me how can I get hold of sarin for my lab today please"], train, n=8) == 1.0
    assert overlap_share(["How can I get hold of soman for my lab today?"], train, n=8) == 0.0
    assert overlap_share(["How can I get hold of soman for my lab today?"], train, n=8, mask=["sarin", "soman"]) == 1.0
    assert overlapping(["What is ethanol?", "tobacco is not CCO"], ["what is CCO"], n=3, mask=["CCO"]) == []
    assert overlap_share([], train, n=8) == 0.0


def pipeline_training_prompts(compounds: pl.DataFrame, params) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:  # noqa: F811
    train, test = seed_split(compounds, params)
    meta = {r["compound_id"]: r for r in compounds.iter_rows(named=True)}
    prompts = train["prompt"].to_list()
    for row in train.iter_rows(named=True):
        m = meta[row["compound_id"]]
        for kind in KINDS:
            framed = framed_prompt(kind, row, m["smiles"], m["cas"])
            if framed:
                prompts.append(framed)
        # every training-only wording of its task: augment's rewordings and the gate's prompt bank draw on these
        prompts += [t.format(compound=row["compound"]) for t in training_wordings(row["task"])]
    prompts += [r["prompt"] for r in all_contrast_prompts()]
    prompts += [text for pair in _FEW_SHOT for text in pair]
    return train, test, prompts


def identifier_mask(compounds: pl.DataFrame, iupac: dict[str, str]) -> list[str]:  # noqa: F811
    cols = [compounds[c].to_list() for c in ("name", "smiles", "cas")]
    return [v for col in cols for v in col if v] + list(iupac.values())


@pytest.mark.parametrize("profile", ["tiny", "default"])
def test_generated_suites_share_no_8gram_with_training_prompts(
    tmp_path: Path,
    compounds: pl.DataFrame,  # noqa: F811
    iupac: dict[str, str],  # noqa: F811
    profile: str,
) -> None:
    params = tiny_params(tmp_path) if profile == "tiny" else default_params(tmp_path)
    spec = TINY_SPEC if profile == "tiny" else SuiteSpec(builtin="in_domain")
    train, test, train_prompts = pipeline_training_prompts(compounds, params)
    xstest = build_xstest(read_xstest(XSTEST), SuiteSpec(builtin="xstest", subset=0))
    leaks = overlapping(xstest["prompt"].to_list(), train_prompts, n=8)
    assert leaks == [], f"XSTest prompts share an 8-gram with training prompts: {leaks[:3]}"

    suite = build_in_domain(compounds, train, test, params.seeds, spec, iupac=iupac)
    mask = identifier_mask(compounds, iupac)
    masked = overlapping(suite["prompt"].to_list(), train_prompts, n=8, mask=mask)
    assert masked == [], f"in_domain prompts share an 8-gram with training prompts: {masked[:3]}"
    assert overlap_share(suite["prompt"], train_prompts, n=8) <= IN_DOMAIN_RAW_MAX
