"""The registered networks as a table that needs no torch.

`architectures.csv` holds one row per network of `models.ARCHITECTURES`: family, block,
depth, width, exact parameters, forward GFLOPs per image and default options. It is
written from the registry by `python -m reproresnet list --csv` and checked against it by
the tests (tests/test_architectures.py), so the book and the command line's help read it
instead of building 21 networks with torch.
"""

from __future__ import annotations

import csv
import functools
import io
from pathlib import Path

TABLE = Path(__file__).with_name("architectures.csv")
# Each network's default options (bn_batch, the last network option, is None for every one).
OPTIONS = ("shortcut", "bottleneck_stride", "dropout", "preact_stage1", "layer_defaults")
COLUMNS = ("name", "family", "block", "depth", "width", "params", "gflops", *OPTIONS)
_TYPES = {"depth": int, "width": int, "params": int, "gflops": float, "dropout": float}
REGENERATE = "python -m reproresnet list --csv > reproresnet/architectures.csv"


def to_csv(rows: list[dict]) -> str:
    """The table's text for `rows` (as `models.architecture_rows` gives them); None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({key: "" if row.get(key) is None else row[key] for key in COLUMNS} for row in rows)
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def rows() -> tuple[dict, ...]:
    """The committed table, typed: ints, floats, strings, and None for an option a network lacks."""
    with open(TABLE, newline="") as file:
        return tuple({key: None if text == "" else _TYPES.get(key, str)(text) for key, text in row.items()}
                     for row in csv.DictReader(file))


def names() -> list[str]:
    return [row["name"] for row in rows()]


def row(name: str) -> dict | None:
    """The network's row, or None if the registry has no such network."""
    return next((dict(r) for r in rows() if r["name"] == name), None)
