"""libra overrides TRL internals in one place (libra/train/trl_compat.py): fail loudly when they change."""

from __future__ import annotations

import pytest
import trl
import trl.trainer.utils as trl_utils
from trl import DPOTrainer

from libra.train.trl_compat import (
    PRIVATE_METHODS,
    TRAINER_ATTRIBUTES,
    TRLInternalsChanged,
    check_trl,
    completion_positions_only,
    incompatibilities,
)


def test_installed_trl_has_every_internal_libra_overrides() -> None:
    problems = incompatibilities()
    assert not problems, (
        f"TRL {trl.__version__} changed internals libra relies on (written for TRL 1.16): {problems}; "
        "update libra/train/trl_compat.py or pin trl==1.16.*"
    )
    assert {name for _, name, _ in PRIVATE_METHODS} == {
        "_prepare_dataset", "_precompute_ref_logps", "_set_signature_columns_if_needed", "_get_train_sampler", "_use_triton",
    }  # fmt: skip


def test_a_changed_signature_fails_naming_the_trl_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", lambda self, dataset: dataset)
    with pytest.raises(TRLInternalsChanged, match=rf"TRL {trl.__version__}.*_precompute_ref_logps"):
        check_trl()


def test_a_removed_helper_fails_naming_the_trl_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(trl_utils, "_use_triton")
    with pytest.raises(TRLInternalsChanged, match=rf"TRL {trl.__version__}.*_use_triton is gone"):
        check_trl()


def test_completion_positions_only_patches_and_restores_trl() -> None:
    original = trl_utils._use_triton
    with completion_positions_only():
        assert trl_utils._use_triton("cpu") is True
    assert trl_utils._use_triton is original


def test_trainer_attributes_libra_reads_are_listed() -> None:
    # They are instance attributes set in DPOTrainer.__init__; LibraDPOTrainer checks them
    # on construction (tests/test_train.py builds one), this only pins the list.
    assert set(TRAINER_ATTRIBUTES) == {"_metrics", "_total_train_tokens", "loss_types", "loss_weights", "beta", "label_smoothing"}
