"""The numbers this project quotes, each with its source and statistic, and the networks it reproduces."""

import contextlib
import io
import re
from pathlib import Path

import pytest

from reproresnet import reference
from reproresnet.recipes import RECIPES

REPO = Path(__file__).resolve().parents[1]


def test_reference_numbers_and_sources():
    table = reference.reference_table()
    assert table.loc["preact_resnet110", ["paper_error", "seed_error", "paper_params"]].tolist() == [6.37, 6.38, "1.7M"]
    assert table.loc["preact_resnet164", ["paper_error", "seed_error", "paper_params"]].tolist() == [5.46, 5.66, "1.7M"]
    assert table.loc["wrn_16_4", "paper_error"] == 5.55 and table.loc["wrn_16_4", "paper_params"] == "2.7M"
    assert table.loc["resnet110", "paper_error"] == 6.61 and table.loc["resnet164", "paper_error"] == 5.93
    assert table["paper_source"].dropna().str.len().min() > 10
    assert reference.seed_run_hours()["preact_resnet110"] == pytest.approx(5.0)


# Each quoted number's statistic, as its source states it (He et al. 2016, 3.1: "Throughout this
# paper we report the median accuracy of 5 runs"; He et al. 2015, table 6: 6.61 is the mean of 5;
# the seed quotes 5.55 without one; the seed: "the first and only training run").
PAPER_STATISTICS = {6.37: "median of 5", 5.46: "median of 5", 5.93: "median of 5", 6.61: "mean of 5",
                    5.55: "not stated"}


def test_every_quoted_number_has_the_statistic_its_source_states():
    quoted = [row for row in reference.REFERENCE if row["paper_error"] is not None]
    assert {row["paper_error"]: row["paper_statistic"][0] for row in quoted} == PAPER_STATISTICS
    assert all(row["paper_preprocessing"] for row in quoted)
    assert reference.SEED_STATISTIC == "single run"
    seeds = [row for row in reference.REFERENCE if row["seed_error"] is not None]
    assert {row["seed_error"]: row["seed_recipe"] for row in seeds} == {
        6.38: "seed_code_2016_04", 5.66: "seed_code", 5.41: "seed_code"}
    assert all(row["seed_recipe"] in RECIPES and row["seed_recipe"] in row["seed_note"] for row in seeds)


def test_the_seeds_numbers_and_times_sit_on_the_networks_that_produced_them():
    """The seed's 5.41 and 113 s/epoch belong to its 22-layer wide network, not to WRN-16-4; each time
    is at the batch its code used for that network (ResNet-164: 48)."""
    table = reference.reference_table()
    assert table.loc["seed_wrn_n2_k4", ["seed_error", "seed_seconds_per_epoch", "seed_batch_size"]].tolist() == \
        [5.41, 113, 64]
    assert table.loc["wrn_16_4", ["seed_error", "seed_seconds_per_epoch"]].isna().all()
    assert (table["seed_error"] == 5.41).sum() == 1
    assert table.loc["preact_resnet164", ["seed_seconds_per_epoch", "seed_batch_size"]].tolist() == [183, 48]
    assert table.loc["preact_resnet110", ["seed_seconds_per_epoch", "seed_batch_size"]].tolist() == [90, 32]
    assert reference.seed_run_hours() == pytest.approx(
        {"preact_resnet110": 5.0, "preact_resnet164": 183 * 200 / 3600, "seed_wrn_n2_k4": 113 * 200 / 3600})


def test_the_makefile_reproduces_the_plan_the_library_names():
    """`make reproduce` and `make smoke` train the plan's networks in tier order and its seeds, as the
    campaign does by default."""
    archs = makefile_plan("ARCHS")
    assert tuple(archs) == reference.PLANNED == (*reference.REPRODUCED, *reference.ORIGINAL_UNITS)
    seeds = makefile_plan("SEEDS")
    assert tuple(map(int, seeds)) == reference.PLANNED_SEEDS


def makefile_plan(variable: str) -> list[str]:
    """The words the Makefile's `variable` expands to: the python its PLAN_OF runs, run here."""
    makefile = (REPO / "Makefile").read_text()
    code = re.search(r"^PLAN_OF = \$\(shell \$\(PYTHON\) -c '(.+)'\)$", makefile, re.M).group(1)
    name = re.search(rf"^{variable} \?= \$\(call PLAN_OF,(\w+)\)$", makefile, re.M).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code.replace("$(1)", name), {})
    return printed.getvalue().split()


def test_the_second_tier_is_he2016s_original_units_with_their_quoted_numbers():
    """The original ResNet-110 and -164 are registered with the original (post-activation) units
    at the depths of their pre-activation counterparts, and quoted with their statistic."""
    from reproresnet.architectures import ARCHITECTURES
    assert reference.ORIGINAL_UNITS == ("resnet110", "resnet164")
    for preact, original in reference.UNIT_COMPARISONS:
        spec, counterpart = ARCHITECTURES[original], ARCHITECTURES[preact]
        assert spec.family == "original" and not spec.preact
        assert (spec.block, spec.depth, spec.width) == (counterpart.block, counterpart.depth, counterpart.width)
    assert [(reference.reference(n)["paper_error"], reference.reference(n)["paper_statistic"][0])
            for n in reference.ORIGINAL_UNITS] == [(6.61, "mean of 5"), (5.93, "median of 5")]
