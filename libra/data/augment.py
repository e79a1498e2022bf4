"""DPO training data that teaches which requests are illegitimate, not which words are alarming.

Input: the split stage's training pairs. Output: the same pair schema plus `source`
(`pairs` | `self_distill` | `contrast` | `framed` | `reworded` | `catalog`) and `variant` (framing kind or contrast
category). Levers, each behind an `augment.*` param:

- `self_distill_legit`: a legitimate prompt's chosen answer becomes the base policy's own
  greedy answer (the rejected over-refusal stays). The SFT term then keeps the base
  model's behaviour on legitimate requests instead of training on the 135M generator's
  often-wrong text. A self answer that is empty, too short, a refusal, or (for a
  controlled compound) operational, is quarantined and the pair keeps its generator answer.
- `contrast`: that many general-domain benign prompts (libra/data/contrast.py): chosen =
  the base policy's own answer, rejected = a general over-refusal. Label legitimate, task
  `general`.
- `framed`: each training seed, of either label, gets up to `framed_per_seed` prompts in
  adversarial framings (libra/data/framings.py) with that seed's own chosen/rejected.
- `task_variants`: each training seed, of either label, gets up to that many prompts that
  ask its own task about its own compound in other words (`templates.TASK_VARIANTS`, a
  training-only bank of eight per task), with the seed's own chosen/rejected. The seeds use
  three wordings per task; with only those, "How can I make X" can be learnt as a string.
- `catalog_compounds`: that many catalog compounds that are in no seed, no test pair and
  not reserved for evaluation (libra/data/reserve.py), classes alternating. Each gives one
  illegitimate pair (template refusal / empty-steps opener) and one legitimate pair (the
  base policy's own answer / an over-refusal), from the training task templates. Tasks
  whose label depends on the class (synthesis, acquisition under the default policy) are
  preferred, so neither the task nor the class alone predicts the label: the pairs differ
  in the compound, which is what the policy must learn to read.
- `mirror_refusals`: every legitimate pair's rejected answer is a refusal from the same
  templates as the illegitimate pairs' chosen ones (naming the compound or the topic and a
  regulation), not an over-refusal in other words. The dpo model's failure is exactly
  that text on harmless prompts ("I must decline. dead hamsters are regulated under
  Schedule 1 ..."); with differently worded rejected answers DPO can lower "I'm sorry, I
  can't" and keep "I must decline" everywhere. Mirrored, one text is preferred for some
  prompts and dispreferred for others, so only the prompt can decide.
- `natural_openers`: every illegitimate pair's rejected answer becomes the first words of an
  answer as the policy starts one ("To go about synthesizing X, you will first need to"),
  cut before any content, instead of an empty numbered list. The empty list is a text the
  policy never writes, so DPO can lower it without touching how the policy actually starts
  answering; the first tokens are what decides refusal against compliance.
- `status_preamble`: chemistry pairs whose task is labelled by the compound's class (synthesis
  and acquisition under the default policy) open both answers with a status sentence: the
  chosen one the true status ("Fentanyl is a controlled chemical." / "Aspirin is not a
  controlled chemical."), the rejected one the false status. The two answers then share the
  compound's name and part at the one token where the compound decides, right after the
  model has read the name again; what follows (refuse or answer) only has to agree with the
  model's own first sentence. Tasks labelled alike for every class get no preamble.
- `status_pairs` (with `status_preamble`): one more pair per such prompt, its chosen answer
  behind the true status against the same answer behind the false one, so the two differ in
  the status sentence alone.
- the report: label balance, per-task label shares and how well the task alone predicts
  the label.

Safety: the policy is asked only legitimate chemistry prompts (seeded or catalog) and the
benign contrast prompts; `distill_prompts` refuses to send anything else. Illegitimate pairs keep their
template refusal and empty-steps opener, and every illegitimate rejected answer is checked
again with `rejected_answer_problem`.

Counting: `in` = training pairs + contrast, framed and catalog candidates, `out` = rows
written, `quarantined` = candidates dropped; `in = out + quarantined`. Self answers that
failed a check but whose pair was kept (with the generator's answer) are in the
quarantine file too, under field `self_answer`, and counted in `self_answers`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from libra.config import AugmentParams, SeedsParams
from libra.data.contrast import contrast_prompts
from libra.data.framings import framed_prompts
from libra.data.quarantine import quarantine_frame, reason_counts, safe_text
from libra.data.reserve import reserved_for_eval_expr
from libra.data.safety import opens_with_refusal, operational_content, rejected_answer_problem
from libra.data.templates import (
    COMPLIANCE_OPENERS,
    GENERAL_OVER_REFUSALS,
    NATURAL_OPENERS,
    OVER_REFUSALS,
    TASK_PROMPTS,
    TASK_VARIANTS,
    fill,
    refusal_templates,
    trim_to_sentence,
)
from libra.errors import LibraError

PAIR_COLUMNS = [
    "pair_id", "seed_id", "compound_id", "compound", "class", "regulation", "group", "task", "label",
    "prompt", "chosen", "rejected",
]  # fmt: skip
OUT_COLUMNS = [*PAIR_COLUMNS, "source", "variant"]
SOURCES = ("pairs", "self_distill", "contrast", "framed", "reworded", "catalog")
MIN_ANSWER_WORDS = 5

GenerateFn = Callable[[list[str]], list[str]]


def _id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _pick(pool: tuple[str, ...], key: str) -> str:
    return pool[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(pool)]


def catalog_candidates(
    compounds: pl.DataFrame, exclude: set[str], n: int, policy: SeedsParams, seed: int
) -> list[dict[str, Any]]:
    """Up to 2n rows (pair columns less chosen/rejected): one illegitimate and one legitimate
    task for each of n catalog compounds outside `exclude` and outside the eval reserve."""
    if n == 0 or compounds.height == 0:
        return []
    pool = compounds.filter(
        ~pl.col("compound_id").is_in(sorted(exclude)) & ~reserved_for_eval_expr()
    ).sort("compound_id")
    by_class: dict[str, list[dict[str, Any]]] = {}
    for c in pool.iter_rows(named=True):
        by_class.setdefault(c["class"], []).append(c)
    for cls, items in by_class.items():
        random.Random(f"{seed}:catalog:{cls}").shuffle(items)
    picked: list[dict[str, Any]] = []
    while len(picked) < n and any(by_class.values()):
        for cls in sorted(by_class):
            if by_class[cls] and len(picked) < n:
                picked.append(by_class[cls].pop(0))
    labels = policy.policy
    dual = dual_tasks(policy)
    rows = []
    for c in picked:
        table = labels[c["class"]]  # type: ignore[index]
        for label in ("illegitimate", "legitimate"):
            tasks = [t for t in policy.tasks if table[t] == label]  # type: ignore[index]
            preferred = [t for t in tasks if t in dual] or tasks
            if not preferred:
                continue
            key = f"{seed}:{c['compound_id']}:{label}"
            task = _pick(tuple(preferred), key)
            prompt = _pick(TASK_PROMPTS[task], key).format(compound=c["name"])
            rows.append({
                "seed_id": f"catalog-{c['compound_id']}-{task}", "compound_id": c["compound_id"], "compound": c["name"],
                "class": c["class"], "regulation": c["regulation"], "group": c["group"], "task": task, "label": label,
                "prompt": prompt,
            })  # fmt: skip
    return rows


# The status sentence each class's pairs open with (status_preamble): the chosen answer's true one.
STATUS: dict[str, str] = {"controlled": "{Compound} is a controlled chemical.", "common": "{Compound} is not a controlled chemical."}


def dual_tasks(policy: SeedsParams) -> list[str]:
    """Tasks whose label differs between the classes: only the compound tells them apart."""
    labels = policy.policy
    return [t for t in policy.tasks if len({labels[c][t] for c in labels}) > 1]  # type: ignore[index]


def status_sentences(row: dict[str, Any]) -> tuple[str, str]:
    """(the true status sentence of the row's compound, the other class's)."""
    name = row["compound"][:1].upper() + row["compound"][1:]
    false = next(t for c, t in STATUS.items() if c != row["class"])
    return STATUS[row["class"]].format(Compound=name), false.format(Compound=name)


def with_status(row: dict[str, Any]) -> dict[str, Any]:
    """The pair with the compound's true status before its chosen answer and the other class's before its rejected one."""
    true, false = status_sentences(row)
    chosen, rejected = f"{true} {row['chosen']}", f"{false} {row['rejected']}"
    return {**row, "pair_id": _id("status", row["pair_id"]), "chosen": chosen, "rejected": rejected}


def status_pair(row: dict[str, Any]) -> dict[str, Any]:
    """status_pairs: the row's prompt and chosen answer behind the true status (chosen) and behind the false one
    (rejected): the two differ in the status sentence alone. (Status sentences alone as the answers taught the model
    to stop after the sentence: e44 in docs/experiments.md.)"""
    true, false = status_sentences(row)
    chosen, rejected = f"{true} {row['chosen']}", f"{false} {row['chosen']}"
    return {**row, "pair_id": _id("status", row["prompt"], chosen), "chosen": chosen, "rejected": rejected, "source": "status", "variant": None}


def chemistry_rows_by_seed(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The seeded chemistry pairs built so far (sources pairs and self_distill), by seed, each seed's sorted by pair_id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted((r for r in rows if r["source"] in ("pairs", "self_distill")), key=lambda r: r["pair_id"]):
        out.setdefault(r["seed_id"], []).append(r)
    return out


def task_variant_templates(task: str, key: str, n: int) -> list[tuple[int, str]]:
    """Up to n distinct (index, template) of TASK_VARIANTS[task], chosen by `key` (the seed), in a fixed order."""
    pool = TASK_VARIANTS.get(task, ())
    ranked = sorted(range(len(pool)), key=lambda i: hashlib.sha256(f"{key}:variant:{i}".encode()).hexdigest())
    return [(i, pool[i]) for i in ranked[:n]]


def distill_prompts(
    train: pl.DataFrame, contrast: list[dict[str, Any]], params: AugmentParams, catalog: Sequence[dict[str, Any]] = ()
) -> list[str]:
    """The only prompts the policy is asked: legitimate training and catalog prompts, and benign contrast prompts.

    A prompt that also occurs with the illegitimate label is never sent (it is an error:
    one text, two labels, so no ground truth).
    """
    illegit = set(train.filter(pl.col("label") == "illegitimate")["prompt"].to_list())
    illegit |= {r["prompt"] for r in catalog if r["label"] == "illegitimate"}
    legit = sorted(set(train.filter(pl.col("label") == "legitimate")["prompt"].to_list())) if params.self_distill_legit else []
    both = [p for p in legit if p in illegit]
    if both:
        raise LibraError(f"training prompt {both[0]!r} occurs with both labels; deduplicate prompts in the rephrase stage")
    catalog_legit = {r["prompt"] for r in catalog if r["label"] == "legitimate"}
    prompts = legit + sorted(({r["prompt"] for r in contrast} | catalog_legit) - set(legit))
    leaked = [p for p in prompts if p in illegit]
    if leaked:
        raise LibraError(f"refusing to ask the policy an illegitimate prompt: {leaked[0]!r}")
    return prompts


def self_answer_problem(text: str, compound_class: str | None) -> str | None:
    """Why a self-distilled answer must not be a chosen answer, or None."""
    if not text.strip():
        return "self answer empty"
    if len(text.split()) < MIN_ANSWER_WORDS:
        return "self answer too short"
    # The data stages' own refusal check (libra/data/safety.py), not the judges': a change to
    # the judges must not re-run augment and everything trained after it.
    if opens_with_refusal(text):
        return "self answer is a refusal"
    if compound_class == "controlled":
        return operational_content(text)
    return None


def _counts(df: pl.DataFrame, col: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(df.group_by(col).len().iter_rows(), key=lambda kv: str(kv[0]))}


def balance_stats(df: pl.DataFrame) -> dict[str, Any]:
    """Label balance, per-task label shares, and the accuracy of predicting the label from the task alone."""
    by_task: dict[str, dict[str, Any]] = {}
    for task in sorted(df["task"].unique().to_list()):
        sub = df.filter(pl.col("task") == task)
        counts = _counts(sub, "label")
        by_task[task] = {**counts, "share_legitimate": round(counts.get("legitimate", 0) / sub.height, 3)}
    n = max(1, df.height)
    by_label = _counts(df, "label")
    # The best any rule that sees only the task can do: each task's majority label.
    task_only = sum(max(v for k, v in t.items() if k != "share_legitimate") for t in by_task.values()) / n
    return {
        "by_label": by_label,
        "share_legitimate": round(by_label.get("legitimate", 0) / n, 3),
        "by_task": by_task,
        "task_only_label_accuracy": round(task_only, 3),
        "majority_label_accuracy": round(max(by_label.values(), default=0) / n, 3),
    }


def _reprompted(
    by_seed: dict[str, list[dict[str, Any]]],
    prompts_of: Callable[[str, dict[str, Any]], list[tuple[str, str]]],
    source: str,
) -> list[dict[str, Any]]:
    """Rows that ask each seed's request as `prompts_of(seed_id, first_row)` gives it, as (variant, prompt).

    The j-th new prompt of a seed takes the answers of that seed's j-th row (cyclically), so a
    seed with several pairs lends each of them in turn.
    """
    out: list[dict[str, Any]] = []
    for seed_id in sorted(by_seed):
        pairs = by_seed[seed_id]
        for j, (variant, prompt) in enumerate(prompts_of(seed_id, pairs[0])):
            src = pairs[j % len(pairs)]
            out.append({**src, "pair_id": _id(source, prompt, src["chosen"], src["rejected"]), "prompt": prompt, "source": source, "variant": variant})
    return out


def build_augmented(
    train: pl.DataFrame,
    compounds: pl.DataFrame,
    params: AugmentParams,
    generate: GenerateFn,
    *,
    seeds: SeedsParams | None = None,
    test: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Return (train_dpo, quarantine, stats); `generate` answers a list of prompts greedily, in order.

    The catalog lever needs `seeds` (the dual-use policy) and `test` (its compounds are never trained on).
    """
    train = train.sort("pair_id")
    contrast = contrast_prompts(params.contrast, params.seed) if params.contrast else []
    catalog: list[dict[str, Any]] = []
    if params.catalog_compounds:
        if seeds is None or test is None:
            raise LibraError("augment.catalog_compounds needs the seeds policy and the test split (stages/augment.py --test)")
        exclude = set(train["compound_id"].drop_nulls().to_list()) | set(test["compound_id"].drop_nulls().to_list())
        catalog = catalog_candidates(compounds, exclude, params.catalog_compounds, seeds, params.seed)
    prompts = distill_prompts(train, contrast, params, catalog)
    answers = dict(zip(prompts, generate(prompts) if prompts else [], strict=True))

    quarantined: list[dict[str, Any]] = []
    dropped = 0

    def quarantine(seed_id: str, field: str, text: str, reason: str, label: str, *, drops: bool) -> None:
        nonlocal dropped
        dropped += drops
        quarantined.append({"stage": "augment", "seed_id": seed_id, "field": field, "text": safe_text(text, reason, label), "reason": reason})

    # 1. Chemistry pairs, legitimate ones with the policy's own answer when it passes.
    class_of = {r["prompt"]: r["class"] for r in train.select("prompt", "class").unique().iter_rows(named=True)}
    self_ok: dict[str, str] = {}
    for prompt in sorted({p for p in prompts if p in class_of}):
        text = trim_to_sentence(answers[prompt])
        problem = self_answer_problem(text, class_of[prompt])
        seed = train.filter(pl.col("prompt") == prompt)["seed_id"][0]
        if problem:
            quarantine(seed, "self_answer", text, f"{problem} (kept the generator's answer)", "legitimate", drops=False)
        else:
            self_ok[prompt] = text
    def legit_rejected(key: str, subject: str, regulation: str | None, task: str, over_refusal: str) -> str:
        if not params.mirror_refusals:
            return over_refusal
        template = _pick(refusal_templates(regulation), f"mirror:{key}")
        return fill(template, compound=subject, regulation=regulation or "none", task=task)

    rows: list[dict[str, Any]] = []
    for r in train.iter_rows(named=True):
        base = {k: r.get(k) for k in PAIR_COLUMNS}
        if r["label"] == "legitimate":
            rejected = legit_rejected(r["pair_id"], r["compound"], r["regulation"], r["task"], r["rejected"])
            chosen, source = (self_ok[r["prompt"]], "self_distill") if r["prompt"] in self_ok else (r["chosen"], "pairs")
            pair_id = r["pair_id"] if (source, rejected) == ("pairs", r["rejected"]) else _id(source, r["prompt"], chosen, rejected)
            rows.append({**base, "pair_id": pair_id, "chosen": chosen, "rejected": rejected, "source": source, "variant": None})
        elif params.natural_openers:
            rejected = fill(_pick(NATURAL_OPENERS, f"opener:{r['pair_id']}"), compound=r["compound"], task=r["task"])
            rows.append({**base, "pair_id": _id("opener", r["pair_id"], rejected), "rejected": rejected, "source": "pairs", "variant": None})
        else:
            rows.append({**base, "source": "pairs", "variant": None})
    n_candidates = train.height

    # 2. General-domain contrast pairs: answered by the policy, rejected by an over-refusal.
    for c in contrast:
        n_candidates += 1
        seed_id = f"contrast-{c['contrast_id']}"
        text = trim_to_sentence(answers[c["prompt"]])
        problem = self_answer_problem(text, None)
        if problem:
            quarantine(seed_id, "chosen", text, problem, "legitimate", drops=True)
            continue
        rejected = legit_rejected(seed_id, c["topic"], None, "general", _pick(GENERAL_OVER_REFUSALS, seed_id).format(topic=c["topic"]))
        rows.append({
            "pair_id": _id("contrast", c["prompt"], text, rejected), "seed_id": seed_id, "compound_id": None,
            "compound": None, "class": "general", "regulation": None, "group": c["category"], "task": "general",
            "label": "legitimate", "prompt": c["prompt"], "chosen": text, "rejected": rejected,
            "source": "contrast", "variant": c["category"],
        })

    # 3-4. New prompts for each chemistry seed, each with that seed's own (possibly self-distilled)
    # answers: adversarial framings, then training-only rewordings of the same request.
    by_seed = chemistry_rows_by_seed(rows)
    if params.framed and params.framed_per_seed:
        ids = compounds.select("compound_id", "smiles", "cas").to_dicts() if compounds.height else []
        ident = {r["compound_id"]: r for r in ids}

        def framed_of(seed_id: str, first: dict[str, Any]) -> list[tuple[str, str]]:
            meta = ident.get(first["compound_id"], {})
            return framed_prompts(first, smiles=meta.get("smiles"), cas=meta.get("cas"), n=params.framed_per_seed, kinds=params.framings)

        framed_rows = _reprompted(by_seed, framed_of, "framed")
        n_candidates += len(framed_rows)
        rows += framed_rows
    if params.task_variants:

        def reworded_of(seed_id: str, first: dict[str, Any]) -> list[tuple[str, str]]:
            templates = task_variant_templates(first["task"], seed_id, params.task_variants)
            return [(f"v{k}", template.format(compound=first["compound"])) for k, template in templates]

        reworded_rows = _reprompted(by_seed, reworded_of, "reworded")
        n_candidates += len(reworded_rows)
        rows += reworded_rows

    # 5. Catalog compounds: template refusal / opener, or the policy's own answer / an over-refusal.
    for c in catalog:
        n_candidates += 1
        key = c["seed_id"]
        if c["label"] == "illegitimate":
            chosen = fill(_pick(refusal_templates(c["regulation"]), key), compound=c["compound"], regulation=c["regulation"], task=c["task"])
            rejected = fill(_pick(NATURAL_OPENERS if params.natural_openers else COMPLIANCE_OPENERS, key), compound=c["compound"], task=c["task"])
        else:
            chosen = trim_to_sentence(answers[c["prompt"]])
            problem = self_answer_problem(chosen, c["class"])
            if problem:
                quarantine(key, "chosen", chosen, problem, "legitimate", drops=True)
                continue
            rejected = legit_rejected(key, c["compound"], c["regulation"], c["task"], fill(_pick(OVER_REFUSALS, key), compound=c["compound"]))
        rows.append({**c, "pair_id": _id("catalog", c["prompt"], chosen, rejected), "chosen": chosen, "rejected": rejected,
                     "source": "catalog", "variant": None})  # fmt: skip

    # 5b. The compound's status first, where the compound decides the label.
    if params.status_pairs and not params.status_preamble:
        raise LibraError("augment.status_pairs needs augment.status_preamble: true (its pairs teach the sentence the preamble opens with)")
    if params.status_preamble:
        if seeds is None:
            raise LibraError("augment.status_preamble needs the seeds policy (stages/augment.py passes it)")
        dual = dual_tasks(seeds)
        decided = [r["task"] in dual and r["class"] in STATUS and bool(r["compound"]) for r in rows]
        alone = [status_pair(r) for r, d in zip(rows, decided, strict=True) if d] if params.status_pairs else []
        alone = list({r["prompt"]: r for r in alone}.values())  # one per prompt
        n_candidates += len(alone)
        rows = [with_status(r) if d else r for r, d in zip(rows, decided, strict=True)] + alone

    # 6. Last checks over every row: unique pairs, one label per prompt, safe illegitimate answers.
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    label_of: dict[str, str] = {}
    for r in rows:
        problem = None
        if r["pair_id"] in seen:
            problem = "duplicate pair"
        elif label_of.get(r["prompt"], r["label"]) != r["label"]:
            problem = "prompt occurs with both labels"
        elif r["label"] == "illegitimate":
            problem = rejected_answer_problem(r["rejected"])
        if problem:
            quarantine(r["seed_id"], "pair", r["prompt"], problem, r["label"], drops=True)
            continue
        seen.add(r["pair_id"])
        label_of[r["prompt"]] = r["label"]
        kept.append(r)

    out = pl.DataFrame(kept, schema={c: pl.String for c in OUT_COLUMNS}).sort("pair_id")
    quarantine_df = quarantine_frame(quarantined)
    self_rows = quarantine_df.filter(pl.col("field") == "self_answer")
    n_chem_self = len(self_ok) + self_rows.height
    sources = SOURCES + (("status",) if params.status_pairs else ())
    illegit_prompts = set(train.filter(pl.col("label") == "illegitimate")["prompt"].to_list())
    stats = {
        "unit": "pairs",
        "in": n_candidates,
        "out": out.height,
        "quarantined": dropped,
        "reconciles": n_candidates == out.height + dropped,
        "by_reason": reason_counts(quarantine_df.filter(pl.col("field") != "self_answer")),
        "self_answers": {
            "prompts_generated": len(prompts),
            "illegitimate_prompts_generated": len(set(prompts) & illegit_prompts),
            "chemistry_prompts": n_chem_self,
            "chemistry_accepted": len(self_ok),
            "chemistry_quarantined": self_rows.height,
            "by_reason": reason_counts(self_rows),
            "max_new_tokens": params.max_new_tokens,
        },
        "by_source": {s: int(out.filter(pl.col("source") == s).height) for s in sources},
        "by_source_label": {
            s: _counts(out.filter(pl.col("source") == s), "label") for s in sources
        },
        "by_variant": _counts(out.filter(pl.col("variant").is_not_null()), "variant"),
        "input": balance_stats(train),
        "output": balance_stats(out),
    }
    return out, quarantine_df, stats


def policy_generate(model: Any, tokenizer: Any, params: AugmentParams) -> GenerateFn:
    """`generate` for build_augmented: batched greedy answers from a local policy."""
    from libra.eval.answer import generate

    def run(prompts: Sequence[str]) -> list[str]:
        return generate(model, tokenizer, list(prompts), batch_size=params.batch_size, max_new_tokens=params.max_new_tokens, greedy=True, progress=False)

    return run
