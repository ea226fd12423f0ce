"""What a setting may be: the error that names a bad one, and the rules every setting is checked by.

A value is checked once, where it is read: a run's own settings by their fields' rules
(`config.TrainConfig`), a recipe's values by the recipe (`recipes.Recipe`), a network's options
by its spec (`architectures.ArchSpec.options`). Each refusal is one line: the setting, its value
and what would be accepted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and what would be accepted."""


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (never a bool, nan or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(ok: bool, name: str, value, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not valid: expected {accepted}")


@dataclass(frozen=True)
class Rule:
    """What one setting accepts: `ok(value)`, said in words as `accepted`; None too if `optional`
    (None leaves the choice to a default)."""
    ok: Callable[[object], bool]
    accepted: str
    optional: bool = False

    def check(self, name: str, value) -> None:
        if value is None and self.optional:
            return
        require(self.ok(value), name, value, self.accepted + (" or None" if self.optional else ""))


def one_of(choices, optional: bool = False) -> Rule:
    return Rule(lambda value: isinstance(value, str) and value in choices, f"one of {list(choices)}", optional)


def choice(name: str, value, choices) -> None:
    one_of(choices).check(name, value)


POSITIVE_INT = Rule(lambda value: is_int(value) and value > 0, "a positive integer")
OPTIONAL_POSITIVE_INT = Rule(POSITIVE_INT.ok, POSITIVE_INT.accepted, optional=True)
BOOL = Rule(lambda value: isinstance(value, bool), "True or False")
OPTIONAL_BOOL = Rule(BOOL.ok, BOOL.accepted, optional=True)
