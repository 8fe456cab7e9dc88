"""Merge policies and the Flower strategy that applies them."""

from strategies.policies import PROTOTYPE_POLICIES, make_policy
from strategies.recon import ReconStrategy

__all__ = ["PROTOTYPE_POLICIES", "ReconStrategy", "make_policy"]
