"""Flower ClientApp and the incremental learner it calls."""
