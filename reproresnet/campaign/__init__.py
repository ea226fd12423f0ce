"""A GPU slot's campaign: the device probe, the self-check that chooses how to train, the plan
trained within a time budget, and the bundles that carry it between slots."""
