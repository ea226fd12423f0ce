"""Ways to train (the self-check's variants) and what a self-check record is worth, without
torch: `campaign --status` and the slot read a record with them before torch is imported."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TrainConfig


@dataclass(frozen=True)
class Variant:
    engine: str          # eager | graph
    bf16: bool
    channels_last: bool
    stack: int           # networks trained as one (1: apart)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.precision}-{'nhwc' if self.channels_last else 'nchw'}-k{self.stack}"

    @classmethod
    def from_name(cls, name: str) -> "Variant":
        engine, precision, layout, stack = name.split("-")
        return cls(engine, precision == "bf16", layout == "nhwc", int(stack[1:]))

    def groups(self, configs: list) -> list[list]:
        """`configs` in the stacks this variant trains them in: `stack` at a time, in order."""
        return [configs[start:start + self.stack] for start in range(0, len(configs), self.stack)]

    def configs(self, configs: list[TrainConfig]) -> list[TrainConfig]:
        """`configs` set to train this way (engine, precision, layout; never torch.compile)."""
        return [dataclasses.replace(config, engine=self.engine, bf16=self.bf16, channels_last=self.channels_last,
                                    compile=False) for config in configs]


def reference_variant() -> Variant:
    """The way every variant is judged against: eager, fp32, NCHW, one network at a time."""
    return Variant("eager", False, False, 1)


# The self-check's record (selfcheck.py): `campaign --status` says what it is worth.
SELFCHECK_FORMAT = "reproresnet-selfcheck/3"


def selfcheck_state(record) -> tuple[str, str]:
    """(state, why) of a self-check record for a later campaign call: "complete" only if it is of
    this format, every one of its checks ran, and the variant it chose passed (a later call reuses
    it); else "old format", "cut short" (its budget ended it, or it was stopped before it wrote
    "complete"), "failed" (its choice did not pass) or "unreadable": the next call checks again."""
    try:
        chosen = record["chosen"]["variant"]
    except (TypeError, KeyError):
        return "unreadable", "no chosen variant in it: checked again on the next call"
    if record.get("format") != SELFCHECK_FORMAT:
        return "old format", f"{record.get('format')!r}, not {SELFCHECK_FORMAT!r}: checked again on the next call"
    if record.get("complete") is not True:
        unchecked = record.get("unchecked") or []
        return "cut short", ((f"by its budget, {len(unchecked)} check(s) not run ({', '.join(unchecked)})"
                              if unchecked else "stopped before it ended") + ": checked again on the next call")
    passed = next((r.get("ok") for r in record.get("variants", []) if r.get("variant") == chosen), None)
    if passed is not True:
        return "failed", f"its choice {chosen} did not pass: checked again on the next call"
    return "complete", f"chose {chosen} ({record['chosen'].get('why', '')}); reused by later calls"
