"""The one error style of the configuration: the key, the value and what is allowed, on one line.

Every section dataclass (pipeline/config.py, pipeline/model/config.py, pipeline/train/config.py)
checks its ranges in `__post_init__` with these helpers, so a value is checked however the section
is built (from params.yaml or directly in code), and library functions need not check it again.
This module imports nothing of the project, so the model package can use it without a cycle.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class UserError(Exception):
    """An error the user can fix (a bad value, a missing or malformed file): reported as one line that
    says what and where, without a traceback (`--debug`, or GRR_COCA_DEBUG=1, shows it)."""


class ConfigError(UserError, ValueError):
    """A configuration key or value that the pipeline cannot accept."""


def exit_on_user_error(main: Callable[[], Any], prefix: str = "error") -> None:
    """Run a stage's or the CLI's main(); a UserError exits 1 with `<prefix>: <message>` on stderr."""
    try:
        main()
    except UserError as e:
        if os.environ.get("GRR_COCA_DEBUG") == "1":
            raise
        print(f"{prefix}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def fail(key: str, value: Any, allowed: str) -> NoReturn:
    raise ConfigError(f"key '{key}': value {value!r} is not allowed; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (YAML's .inf and .nan are refused: no setting means them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_ints(section: Any, prefix: str, names: tuple[str, ...], minimum: int = 1,
               maximum: int | None = None) -> None:
    """Each named field is an integer in [minimum, maximum]."""
    for name in names:
        value = getattr(section, name)
        if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
            fail(f"{prefix}.{name}", value,
                 f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]")


def check_number(section: Any, prefix: str, name: str, *, above: float | None = None,
                 at_least: float | None = None, below: float | None = None,
                 at_most: float | None = None) -> None:
    """The named field is a number within the given bounds (strict: above/below; inclusive: at_least/at_most)."""
    value = getattr(section, name)
    ok = _is_number(value)
    if ok:
        ok = ((above is None or value > above) and (at_least is None or value >= at_least)
              and (below is None or value < below) and (at_most is None or value <= at_most))
    if not ok:
        low = f"> {above}" if above is not None else f">= {at_least}" if at_least is not None else ""
        high = f"< {below}" if below is not None else f"<= {at_most}" if at_most is not None else ""
        fail(f"{prefix}.{name}", value, "a finite number " + " and ".join(p for p in (low, high) if p))


def check_choice(section: Any, prefix: str, name: str, allowed: tuple[Any, ...]) -> None:
    value = getattr(section, name)
    if value not in allowed:
        fail(f"{prefix}.{name}", value, ", ".join(map(str, allowed)))


def check_bool(section: Any, prefix: str, name: str) -> None:
    if not isinstance(getattr(section, name), bool):
        fail(f"{prefix}.{name}", getattr(section, name), "true or false")


def check_text(section: Any, prefix: str, name: str) -> None:
    value = getattr(section, name)
    if not isinstance(value, str) or not value.strip():
        fail(f"{prefix}.{name}", value, "a non-empty string")
