"""The committed table of networks (reproresnet/architectures.csv) against the registry that
builds them: the book and the command line read the table, so it must say what the code builds."""

import pytest
import torch

from reproresnet import architectures, models
from reproresnet.architectures import ARCHITECTURES, NETWORK_OPTIONS, default_options


def test_the_table_lists_every_registered_network_with_its_spec_and_default_options():
    rows = architectures.rows()
    assert [row["name"] for row in rows] == list(ARCHITECTURES)
    for row in rows:
        spec = ARCHITECTURES[row["name"]]
        assert (row["family"], row["block"], row["depth"], row["width"]) == \
            (spec.family, spec.block, spec.depth, spec.width)
        options = default_options(spec.family, spec.block)
        assert {name: row[name] for name in architectures.OPTIONS} == \
            {name: options.get(name) for name in architectures.OPTIONS}
        assert options["bn_batch"] is None
    assert set(architectures.OPTIONS) | {"bn_batch"} == set(NETWORK_OPTIONS)  # every option the table holds


@pytest.mark.parametrize("row", [row for row in architectures.rows() if row["depth"] < 1000], ids=lambda row: row["name"])
def test_parameters_and_flops_of_each_network_match_what_the_registry_builds(row):
    """The 1001- and 1202-layer networks take seconds each: the slow test checks them."""
    meta = torch.device("meta")
    with meta:
        model = models.build_model(row["name"])
    assert models.count_parameters(model) == row["params"], architectures.REGENERATE
    assert round(models.flops_per_image(model, meta) / 1e9, 3) == row["gflops"], architectures.REGENERATE


@pytest.mark.slow  # builds the 1000-layer networks too
def test_the_committed_table_is_what_list_csv_writes():
    assert architectures.TABLE.read_text() == architectures.to_csv(models.architecture_rows()), \
        f"reproresnet/architectures.csv is stale: {architectures.REGENERATE}"
