"""A GPU slot's campaign: the device probe, the self-check that chooses how to train, the plan
trained within a time budget, and the bundles that carry it between slots. Its face (torch-free):
the ways to train, and whether a run's checkpoint is kept (beside it, or in the committed bundle)."""

from .bundle import checkpoint_kept
from .variants import Variant, reference_variant, selfcheck_state

__all__ = ["Variant", "checkpoint_kept", "reference_variant", "selfcheck_state"]
