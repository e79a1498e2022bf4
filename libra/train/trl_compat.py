"""Every place libra relies on TRL internals, in one file.

libra trains with TRL's `DPOTrainer` but feeds it pre-tokenised pairs with precomputed
reference log-probs and its own sampler. That needs four private `DPOTrainer` methods
overridden and one private helper of `trl.trainer.utils` patched. They are not API: a
TRL release may rename or reshape them. `tests/test_trl_compat.py` asserts that each
still exists with the signature used here and fails naming the installed TRL version,
and `check_trl()` does the same at run time, before any training starts.

Tested against TRL 1.16.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
import trl
from trl import DPOTrainer

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
PAIR_INDEX = "pair_index"  # a training row's index, for per-pair state kept outside the dataset
TESTED_TRL = "1.16"

# (owner, private name, parameters after self) that libra overrides or patches.
PRIVATE_METHODS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("DPOTrainer", "_prepare_dataset", ("dataset", "processing_class", "args", "dataset_name")),
    ("DPOTrainer", "_precompute_ref_logps", ("dataset", "name", "batch_size")),
    ("DPOTrainer", "_set_signature_columns_if_needed", ()),
    ("DPOTrainer", "_get_train_sampler", ("train_dataset",)),
    ("trl.trainer.utils", "_use_triton", ("device",)),
)


# DPOTrainer instance attributes (set in its __init__) that libra's DPO step reads or updates.
TRAINER_ATTRIBUTES = ("_metrics", "_total_train_tokens", "loss_types", "loss_weights", "beta", "label_smoothing")


class TRLInternalsChanged(RuntimeError):
    pass


def _owner(name: str) -> Any:
    if name == "DPOTrainer":
        return DPOTrainer
    import importlib

    return importlib.import_module(name)


def incompatibilities() -> list[str]:
    """What differs from the TRL internals libra was written against (empty when all match)."""
    problems = []
    for owner, name, expected in PRIVATE_METHODS:
        fn = getattr(_owner(owner), name, None)
        if fn is None:
            problems.append(f"{owner}.{name} is gone")
            continue
        params = tuple(p for p in inspect.signature(fn).parameters if p != "self")
        if params != expected:
            problems.append(f"{owner}.{name}{params} is not {name}{expected}")
    return problems


def check_trl() -> None:
    """Raise, naming the installed TRL version, if the internals libra overrides changed."""
    problems = incompatibilities()
    if problems:
        raise TRLInternalsChanged(
            f"TRL {trl.__version__} changed internals libra overrides (written for TRL {TESTED_TRL}): "
            + "; ".join(problems)
            + ". Pin trl==1.16.* or update libra/train/trl_compat.py"
        )


def check_trainer(trainer: Any) -> None:
    """Raise, naming the TRL version, if a constructed DPOTrainer lacks an attribute libra's step uses."""
    missing = [name for name in TRAINER_ATTRIBUTES if not hasattr(trainer, name)]
    if missing:
        raise TRLInternalsChanged(
            f"TRL {trl.__version__} DPOTrainer has no {missing} (libra was written for TRL {TESTED_TRL}); "
            "pin trl==1.16.* or update libra/train/trl_compat.py"
        )


class PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer that takes libra's pre-tokenised pairs and precomputed reference log-probs.

    - a dataset with `prompt_ids` is already tokenised: TRL's `_prepare_dataset` is skipped;
    - a dataset with both reference columns skips TRL's reference pass;
    - the `length` and `pair_index` columns survive TRL's column pruning, for the sampler
      and the frozen-layer cache;
    - `train_sampler(dataset)` (a public hook for subclasses) replaces TRL's sampler when it
      returns one.
    """

    def train_sampler(self, dataset: Any) -> torch.utils.data.Sampler[int] | None:
        return None

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _precompute_ref_logps(self, dataset, name, batch_size):  # type: ignore[no-untyped-def]
        if set(REF_COLUMNS) <= set(dataset.column_names):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for column in ("length", PAIR_INDEX):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def _get_train_sampler(self, train_dataset=None):  # type: ignore[no-untyped-def]
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        sampler = self.train_sampler(dataset)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)


@contextlib.contextmanager
def completion_positions_only() -> Iterator[None]:
    """Let TRL's LM head score only completion positions, on CPU too.

    TRL 1.16 projects hidden states through the 49k-token LM head keeping only the
    positions with a label ("compact") when `trl.trainer.utils._use_triton(device)` says
    so, i.e. on CUDA/XPU; elsewhere it scores every position, prompt and padding
    included, because changing shapes would recompile on Neuron. Eager CPU has no such
    cost. Same values (tested in tests/test_train.py).
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original
