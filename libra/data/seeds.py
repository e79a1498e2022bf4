"""Balanced seeds: (compound, task) pairs labelled by the policy table, sampled by ratio.

Labels are per (compound class, task), not per compound: synthesis of sarin is
illegitimate, first aid for sarin exposure is legitimate, synthesis of aspirin legitimate.
Sampling is seeded and stratified: round-robin over tasks, and within a task over groups.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

import polars as pl

from libra.config import SeedsParams
from libra.data.templates import TASK_PROMPTS
from libra.errors import LibraError

SEED_COLUMNS = [
    "seed_id", "compound_id", "compound", "name", "class", "regulation", "group", "task", "label", "prompt",
]  # fmt: skip


def candidate_seeds(compounds: pl.DataFrame, params: SeedsParams) -> pl.DataFrame:
    """Every (compound, task) pair with its policy label, in a stable order."""
    rows = []
    for c in compounds.sort("compound_id").iter_rows(named=True):
        shown = c["smiles"] if params.mode == "smiles" else c["name"]
        for task in params.tasks:
            label = params.policy[c["class"]][task]
            rows.append({**c, "compound": shown, "task": task, "label": label})
    return pl.DataFrame(rows)


def _stratified_sample(pool: list[dict], n: int, rng: random.Random) -> list[dict]:
    """Take n rows cycling over tasks, and within a task over groups, each bucket shuffled."""
    by_task: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in pool:
        by_task[row["task"]][row["group"]].append(row)
    for groups in by_task.values():
        for bucket in groups.values():
            rng.shuffle(bucket)
    group_cycle = {task: sorted(groups) for task, groups in by_task.items()}
    group_pos = dict.fromkeys(by_task, 0)
    taken: list[dict] = []
    tasks = sorted(by_task)
    while len(taken) < n:
        progressed = False
        for task in tasks:
            if len(taken) == n:
                break
            groups = group_cycle[task]
            for _ in range(len(groups)):
                group = groups[group_pos[task] % len(groups)]
                group_pos[task] += 1
                if by_task[task][group]:
                    taken.append(by_task[task][group].pop())
                    progressed = True
                    break
        if not progressed:
            break
    return taken


def _seed_id(row: dict) -> str:
    return hashlib.sha256(f"{row['compound_id']}|{row['task']}".encode()).hexdigest()[:12]


def sample_seeds(compounds: pl.DataFrame, params: SeedsParams) -> pl.DataFrame:
    """The balanced seed table: n_illegitimate illegitimate and legit_ratio x as many legitimate."""
    candidates = candidate_seeds(compounds, params)
    rng = random.Random(params.seed)
    illegit_pool = candidates.filter(pl.col("label") == "illegitimate").to_dicts()
    legit_pool = candidates.filter(pl.col("label") == "legitimate").to_dicts()
    n_legit = round(params.legit_ratio * params.n_illegitimate)
    if params.n_illegitimate > len(illegit_pool):
        raise LibraError(
            f"seeds.n_illegitimate = {params.n_illegitimate} but the catalog and policy give only "
            f"{len(illegit_pool)} illegitimate (compound, task) pairs; lower it or extend the catalog"
        )
    if n_legit > len(legit_pool):
        raise LibraError(
            f"seeds.legit_ratio x n_illegitimate = {n_legit} legitimate seeds but only {len(legit_pool)} "
            "exist; lower seeds.legit_ratio or seeds.n_illegitimate"
        )
    chosen = _stratified_sample(illegit_pool, params.n_illegitimate, rng) + _stratified_sample(legit_pool, n_legit, rng)
    rows = []
    for row in chosen:
        templates = TASK_PROMPTS[row["task"]]
        seed_id = _seed_id(row)
        template = templates[int(seed_id, 16) % len(templates)]
        rows.append({**row, "seed_id": seed_id, "prompt": template.format(compound=row["compound"])})
    return pl.DataFrame(rows).select(SEED_COLUMNS).sort("seed_id")
