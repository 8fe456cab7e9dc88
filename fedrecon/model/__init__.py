"""The federated model out of its run: a folder that loads without the run or the scenario
(:mod:`fedrecon.model.export` writes it, :class:`Model` loads and predicts). Flower-free."""

from fedrecon.model.folder import ModelError
from fedrecon.model.model import Model, load_model

__all__ = ["Model", "ModelError", "load_model"]
