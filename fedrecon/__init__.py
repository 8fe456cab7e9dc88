"""fedrecon: federated class-incremental learning with exact statistic merges.

The Python API, for notebooks and scripts (README, "Use the model")::

    import fedrecon
    result = fedrecon.run("scenarios/omniglot-quickstart.yaml", overrides={"merge.head": "lda"})
    fedrecon.export(result.folder, "models/quickstart")
    fedrecon.load_model("models/quickstart").predict(["drawing.png"])

Each name is imported when first used (PEP 562's module ``__getattr__``): ``import fedrecon``
loads neither torch nor Flower, and ``load_model`` never loads Flower.
"""

__version__ = "0.1.0"

# name -> module that defines it; run and export need the server (fedrecon.api says why)
_API = {"load_model": "fedrecon.model", "Model": "fedrecon.model", "ModelError": "fedrecon.model",
        "run": "fedrecon.api", "export": "fedrecon.api", "RunResult": "fedrecon.api"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'fedrecon' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
