"""Which catalog compounds are kept for evaluation, fixed by each compound's id alone.

The in_domain suite draws its extra unseen compounds only from the reserved half; the
augment stage's catalog lever draws its training compounds only from the other half.
Neither stage reads the other's output, so a change to one never re-runs the other, and
no compound can be both trained on and scored as unseen (tests/test_augment.py checks it).
"""

from __future__ import annotations

import hashlib


def reserved_for_eval(compound_id: str) -> bool:
    """True for about half the catalog: the compounds only evaluation may use."""
    return int(hashlib.sha256(f"eval-reserve:{compound_id}".encode()).hexdigest()[:8], 16) % 2 == 0
