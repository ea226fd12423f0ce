"""The numbers this project compares against, each with the source that states it.

Nothing here is measured by this project: the values are quoted, so the book can show
them next to ours and say where each one comes from.
"""

from __future__ import annotations

import pandas as pd

HE2016 = "He et al. 2016, Identity Mappings in Deep Residual Networks, table 3"
ZAGORUYKO2016 = "Zagoruyko & Komodakis 2016, Wide Residual Networks"
SEED = "Muellerklein, [Re] Reproducing CIFAR-10 results from deep and wide preactivation residual networks"
SEED_DEVICE = "GTX 980"
SEED_BATCH_SIZE = 64
SEED_EPOCHS = 200
SEED_RUNS_PER_NETWORK = 1  # "the first and only training run"

HE2015 = "He et al. 2015, Deep Residual Learning for Image Recognition, table 6"
SEED_STATISTIC = "single run"  # "All results are presented from the first and only training run."

# What each source's number is, as the source states it: (short, in full). Read from the papers.
HE2016_TABLE3 = ("not stated", "He et al. 2016 give one number per network in tables 2 and 3 and do not say "
                 "whether it is one run, a mean or a median.")
HE2016_MEDIAN = ("median of 5", "He et al. 2016, table 4: \"Our results are the median of 5 runs with mean±std "
                 "in the brackets\"; this row has no brackets, so its mean and spread are not reported.")
HE2015_MEAN = ("mean of 5", "He et al. 2015, table 6 runs ResNet-110 5 times and shows \"best (mean±std)\": "
               "6.43 (6.61±0.16); He et al. 2016 quote the mean, 6.61.")
WRN_AS_QUOTED = ("not stated", "5.55 is the number the seed quotes for \"WResNet-n2-k4\"; the statistic is not "
                 "stated there. The final version of Zagoruyko & Komodakis reports its CIFAR numbers as the median "
                 "of 5 runs; for WRN-16-4 with dropout, 5.24 (mean/std preprocessing, table 6).")

# One row per network: CIFAR-10 test error (%) of the original paper and of the seed, what
# statistic the paper's number is, parameters as the papers write them, and the seed's seconds
# per epoch (GTX 980, batch 64). None: that source does not report it. `paper_recipe`: the
# library's recipe for the paper's training and `paper_normalization` its input
# normalization (what our runs' footnotes compare against).
# `seed_network`: the network the seed actually trained where it is not the paper's.
REFERENCE = (
    {"network": "preact_resnet110", "title": "Pre-act ResNet-110",
     "paper_error": 6.37, "paper_source": HE2016, "paper_statistic": HE2016_TABLE3,
     "paper_recipe": "he2016", "paper_normalization": "per_pixel_mean", "seed_error": 6.38, "paper_params": "1.7M", "seed_seconds_per_epoch": 90},
    {"network": "preact_resnet164", "title": "Pre-act ResNet-164",
     "paper_error": 5.46, "paper_source": HE2016, "paper_statistic": HE2016_MEDIAN,
     "paper_recipe": "he2016", "paper_normalization": "per_pixel_mean", "seed_error": 5.66, "paper_params": "1.7M", "seed_seconds_per_epoch": 183},
    # The seed quotes 5.55 for "WResNet-n2-k4" and trains a 2/4/4-block network (~5.7M
    # parameters) under that name; see the recipe audit.
    {"network": "wrn_16_4", "title": "WRN-16-4",
     "paper_error": 5.55, "paper_source": f"{ZAGORUYKO2016}, as the seed quotes it",
     "paper_statistic": WRN_AS_QUOTED, "paper_recipe": "wrn2016", "paper_normalization": "per_channel",
     "seed_error": 5.41, "paper_params": "2.7M", "seed_seconds_per_epoch": 113,
     "seed_network": "seed_wrn_n2_k4"},
    # The network behind the seed's 5.41: its "WRN n=2 k=4" stacks 2/4/4 units per stage
    # (about 22 layers, 5,702,746 parameters in its Lasagne code); no paper reports it.
    {"network": "seed_wrn_n2_k4", "title": "its \"WRN n=2, k=4\" with 2/4/4 units per stage (about 22 layers)",
     "paper_error": None, "paper_source": None, "paper_statistic": None,
     "paper_recipe": None, "seed_error": 5.41, "paper_params": "≈5.7M", "seed_seconds_per_epoch": 113},
    # Context: the original (post-activation) units, from the same table of He et al. 2016.
    {"network": "resnet110", "title": "ResNet-110 (original)",
     "paper_error": 6.61, "paper_source": f"{HE2016} (from {HE2015})", "paper_statistic": HE2015_MEAN,
     "paper_recipe": "he2016", "paper_normalization": "per_pixel_mean", "seed_error": None, "paper_params": "1.7M", "seed_seconds_per_epoch": None},
    {"network": "resnet164", "title": "ResNet-164 (original)",
     "paper_error": 5.93, "paper_source": HE2016, "paper_statistic": HE2016_TABLE3,
     "paper_recipe": "he2016", "paper_normalization": "per_pixel_mean", "seed_error": None, "paper_params": "1.7M", "seed_seconds_per_epoch": None},
)

# The three networks the seed reproduced; the others are context.
REPRODUCED = ("preact_resnet110", "preact_resnet164", "wrn_16_4")


def reference_table() -> pd.DataFrame:
    """The quoted numbers, one row per network, indexed by the registry name."""
    return pd.DataFrame(REFERENCE).set_index("network")


def reference(network: str) -> dict | None:
    """The quoted numbers for one network, or None if no source quotes it."""
    return next((dict(row) for row in REFERENCE if row["network"] == network), None)


# Exact parameter counts printed by the authors' own code, to check the registry against.
CODE_PARAMS = {
    "preact_resnet164": (1_703_258, "in the training log of KaimingHe/resnet-1k-layers"),
}


def seed_run_hours() -> dict[str, float]:
    """Hours one full run took the seed (its seconds per epoch × its epochs), per network."""
    return {row["network"]: row["seed_seconds_per_epoch"] * SEED_EPOCHS / 3600
            for row in REFERENCE if row["seed_seconds_per_epoch"] is not None}
