"""Entry-point wrapper: turn LibraError into one line on stderr and its exit code."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

from libra.errors import LibraError

F = TypeVar("F", bound=Callable[..., object])


def report(exc: LibraError) -> int:
    """Print `error: <message>` (one line) on stderr; return the exit code. Shared by stages and the CLI."""
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code


def entrypoint(fn: F) -> F:
    """Run `fn`; a LibraError prints `error: <message>` and exits with its code."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        # transformers 4.5x warns about its own renamed argument on every TRL config; it is
        # not actionable by a libra user and would bury libra's one-line errors.
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)
        try:
            return fn(*args, **kwargs)
        except LibraError as exc:
            sys.exit(report(exc))
        except KeyboardInterrupt:
            print("error: interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
