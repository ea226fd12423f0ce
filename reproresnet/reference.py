"""The numbers this project compares against, each with the source that states it.

Nothing here is measured by this project: the values are quoted, so the book can show
them next to ours and say where each one comes from, what statistic it is, which
preprocessing and precision produced it, and which code state and network the seed's came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

HE2016 = "He et al. 2016, Identity Mappings in Deep Residual Networks, table 3"
ZAGORUYKO2016 = "Zagoruyko & Komodakis 2016, Wide Residual Networks"
SEED = "Muellerklein, [Re] Reproducing CIFAR-10 results from deep and wide preactivation residual networks"
SEED_REPOSITORY = "FlorianMuellerklein/Identity-Mapping-ResNet-Lasagne"
SEED_DEVICE = "GTX 980"
SEED_EPOCHS = 200
SEED_RUNS_PER_NETWORK = 1  # "the first and only training run"

HE2015 = "He et al. 2015, Deep Residual Learning for Image Recognition, table 6"
SEED_STATISTIC = "single run"  # "All results are presented from the first and only training run."

# What each source's number is, as the source states it: (short, in full). Read from the papers.
HE2016_MEDIAN = ("median of 5", "He et al. 2016, section 3.1: \"Throughout this paper we report the median "
                 "accuracy of 5 runs for each architecture on CIFAR\"; table 4: \"Our results are the median of 5 "
                 "runs with mean±std in the brackets\" (brackets for ResNet-1001 only).")
HE2015_MEAN = ("mean of 5", "He et al. 2015, table 6: \"For ResNet-110, we run it 5 times and show 'best "
               "(mean±std)'\": 6.43 (6.61±0.16). He et al. 2016 give the same 6.61 for \"ResNet-110 [1]\" "
               "(table 4) and as their baseline (3.1): He et al. 2015's mean.")
WRN_AS_QUOTED = ("not stated", "5.55 is the number the seed quotes for \"WResNet-n2-k4\" from the first version "
                 "of Zagoruyko & Komodakis (arXiv v1, May 2016); the seed does not say what statistic it is. "
                 "The authors' README states \"median of 5 runs\" for its table of mean/std-preprocessed CIFAR "
                 "results (added in November 2016), which does not include WRN-16-4 or this number.")

# Preprocessing behind each quoted number, in the sources' words.
HE_PREPROCESSING = ("Preprocessing of He et al.'s numbers: \"32×32 images, with the per-pixel mean subtracted\" "
                    "(He et al. 2015, 4.2; He et al. 2016: \"Our implementation details (see appendix) are the "
                    "same as [1]\"); normalization per_pixel_mean here.")
WRN_V1_PREPROCESSING = ("Preprocessing of 5.55: \"global contrast normalization and ZCA whitening\" (the seed, "
                        "quoting the wide-network paper's first version); the authors' README: \"To whiten "
                        "CIFAR-10 and CIFAR-100 we used ... pylearn2/scripts/datasets/make_cifar10_gcn_whitened.py\" "
                        "(normalization gcn_zca here). Their README since November 2016: \"on CIFAR meanstd "
                        "preprocessing (as in fb.resnet.torch) gives better results than ZCA whitening\" (recipe "
                        "wrn2016, normalization per_channel).")
QUOTED_PRECISION = ("Precision of the papers' and the seed's numbers: fp32 (He et al.: Caffe, as the "
                    "resnet-1k-layers README says; WRN: Torch's torch.CudaTensor; the seed: Theano on a GTX 980); "
                    "the GPUs of 2016 had neither bf16 nor TF32.")

# The code state and network behind each of the seed's numbers, read from its repository's history.
SEED_110_NOTE = ("The seed's 6.38 came from its code at 7c4c997 (2016-04-24, \"initialize repo with ResNet110 "
                 "results\"): batch 32, lr 0.01 then 0.001 at epoch 80 and 0.0001 at 120, inputs divided by 255 "
                 "with no mean subtracted, and no BN-ReLU of their own in the units of stage 1 after the "
                 "first; recipe seed_code_2016_04 here, not the recipe its text states. Its README at 3403cfb: "
                 "\"Weights for ResNet-110 are from an older slightly tweaked architecture, I need to re-run "
                 "it\"; the 6.38 never changed afterwards.")
SEED_164_NOTE = ("The seed's 5.66 came from its code at 3403cfb (2016-06-06, \"Updated with most recent "
                 "bottleneck\"): batch 48, recipe seed_code here.")
SEED_WRN_NOTE = ("The seed's 5.41 came from its code at 0adef49 (2016-06-15, \"Updated README with wideresnet "
                 "results\"): ResNet_FullPre_Wide(n=2, k=4) at batch 64, recipe seed_code here.")

# What every number of He et al. 2016's CIFAR table shares, and the rows the seed has no number for.
_HE2016_TABLE = {"paper_source": HE2016, "paper_statistic": HE2016_MEDIAN, "paper_preprocessing": HE_PREPROCESSING,
                 "paper_recipe": "he2016", "paper_normalization": "per_pixel_mean", "paper_params": "1.7M"}
_NOT_IN_THE_SEED = {"seed_error": None, "seed_recipe": None, "seed_note": None, "seed_seconds_per_epoch": None,
                    "seed_batch_size": None}

# One row per network: CIFAR-10 test error (%) of the original paper and of the seed, what
# statistic, preprocessing and precision each is, parameters as the papers write them, and the
# seed's seconds per epoch (GTX 980, training and validation of one epoch as its train_nn.py
# times them) at `seed_batch_size`, its code's batch for that network. None: that source does
# not report it. `paper_recipe`: the library's recipe for the paper's training and
# `paper_normalization` the input normalization of the quoted number (what our runs' footnotes
# compare against). `seed_recipe`: the library's recipe for the code state behind the seed's
# number. `seed_network`: the network the seed actually trained where it is not the paper's; the
# seed's number and time sit on that network's row only.
REFERENCE = (
    {"network": "preact_resnet110", "title": "Pre-act ResNet-110", "paper_error": 6.37, **_HE2016_TABLE,
     "seed_error": 6.38, "seed_recipe": "seed_code_2016_04", "seed_note": SEED_110_NOTE,
     "seed_seconds_per_epoch": 90, "seed_batch_size": 32},
    {"network": "preact_resnet164", "title": "Pre-act ResNet-164", "paper_error": 5.46, **_HE2016_TABLE,
     "seed_error": 5.66, "seed_recipe": "seed_code", "seed_note": SEED_164_NOTE,
     "seed_seconds_per_epoch": 183, "seed_batch_size": 48},
    # The seed quotes 5.55 for "WResNet-n2-k4" and trains a 2/4/4-block network (~5.7M
    # parameters) under that name; its number and time are on that network's row.
    {"network": "wrn_16_4", "title": "WRN-16-4",
     "paper_error": 5.55, "paper_source": f"{ZAGORUYKO2016} (arXiv v1), as the seed quotes it",
     "paper_statistic": WRN_AS_QUOTED, "paper_preprocessing": WRN_V1_PREPROCESSING, "paper_recipe": "wrn2016",
     "paper_normalization": "gcn_zca", "paper_params": "2.7M", **_NOT_IN_THE_SEED, "seed_network": "seed_wrn_n2_k4"},
    # The network behind the seed's 5.41: its "WRN n=2 k=4" stacks 2/4/4 units per stage
    # (about 22 layers, 5,702,746 parameters in its Lasagne code); no paper reports it.
    {"network": "seed_wrn_n2_k4", "title": "ReScience \"WRN n=2, k=4\"",
     "paper_error": None, "paper_source": None, "paper_statistic": None, "paper_preprocessing": None,
     "paper_recipe": None, "paper_params": "≈5.7M",
     "seed_error": 5.41, "seed_recipe": "seed_code", "seed_note": SEED_WRN_NOTE,
     "seed_seconds_per_epoch": 113, "seed_batch_size": 64},
    # Context: the original (post-activation) units, from the same table of He et al. 2016.
    {"network": "resnet110", "title": "ResNet-110 (original)", "paper_error": 6.61,
     **_HE2016_TABLE, "paper_source": f"{HE2016} (from {HE2015})", "paper_statistic": HE2015_MEAN,
     **_NOT_IN_THE_SEED},
    {"network": "resnet164", "title": "ResNet-164 (original)", "paper_error": 5.93, **_HE2016_TABLE,
     **_NOT_IN_THE_SEED},
)

# The three networks the seed reproduced, which this project reproduces (the plan's first tier,
# and the default of the self-check and the benchmark).
REPRODUCED = ("preact_resnet110", "preact_resnet164", "wrn_16_4")
# He et al. 2016 (table 3) compare each pre-activation network with the original (post-activation)
# units at the same depth: (pre-activation, original). The originals are the plan's second tier.
UNIT_COMPARISONS = (("preact_resnet110", "resnet110"), ("preact_resnet164", "resnet164"))
ORIGINAL_UNITS = tuple(original for _, original in UNIT_COMPARISONS)
# Wide and shallow against deep and thin, in the form the plan can test: the seed's table sets
# WRN-16-4 (5.55, from Zagoruyko & Komodakis v1) beside pre-act ResNet-164 (5.46). The wide
# paper's own comparison, a 16-layer wide network against the 1001-layer one, needs a
# ResNet-1001, which the plan does not train.
WIDE_VS_DEEP = ("wrn_16_4", "preact_resnet164")
# The plan: each tier's networks trained with every planned seed, a tier started once the tiers
# before it are complete (the campaign; `make reproduce` trains them in this order).
PLAN_TIERS = (REPRODUCED, ORIGINAL_UNITS)
PLANNED_SEEDS = (0, 1, 2)
PLANNED = tuple(network for tier in PLAN_TIERS for network in tier)


def reference_table() -> pd.DataFrame:
    """The quoted numbers, one row per network, indexed by the registry name."""
    import pandas as pd
    return pd.DataFrame(REFERENCE).set_index("network")


def reference(network: str) -> dict | None:
    """The quoted numbers for one network, or None if no source quotes it."""
    return next((dict(row) for row in REFERENCE if row["network"] == network), None)


# Exact parameter counts printed by the authors' own code, to check the registry against.
CODE_PARAMS = {
    "preact_resnet164": (1_703_258, "in their training log, szagoruyko/wide-residual-networks "
                                    "logs/resnet-pre-act_17934627/log.txt"),
}


def seed_run_hours() -> dict[str, float]:
    """Hours one full run took the seed (its seconds per epoch × its epochs), per network it timed."""
    return {row["network"]: row["seed_seconds_per_epoch"] * SEED_EPOCHS / 3600
            for row in REFERENCE if row["seed_seconds_per_epoch"] is not None}
