"""Which catalog compounds are kept for evaluation, fixed by each compound's id alone.

The in_domain suite draws its extra unseen compounds only from the reserved half; the
augment stage's catalog lever draws its training compounds only from the other half.
Neither stage reads the other's output, so a change to one never re-runs the other, and
no compound can be both trained on and scored as unseen (tests/test_augment.py checks it).
"""

from __future__ import annotations

import hashlib

import polars as pl


def reserved_for_eval(compound_id: str) -> bool:
    """True for about half the catalog: the compounds only evaluation may use."""
    return int(hashlib.sha256(f"eval-reserve:{compound_id}".encode()).hexdigest()[:8], 16) % 2 == 0


def reserved_for_eval_expr(column: str = "compound_id") -> pl.Expr:
    """`reserved_for_eval` over a compound-id column, as a polars filter expression."""
    return pl.col(column).map_elements(reserved_for_eval, return_dtype=pl.Boolean)
