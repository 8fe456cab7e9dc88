"""Components named by import path: ``package.module:attribute``.

Built-in backbones, datasets and merge policies are looked up by name in small
explicit tables; a user's own one is named by where it lives, as Flower's pyproject
names its apps (``server.server_app:app``). Importing is done on request only, never
when a scenario is parsed.
"""

from __future__ import annotations

import importlib
from typing import Any


class PluginError(ValueError):
    """An import path that does not lead to an object; the message says why in one line,
    and the exception it is raised from (a plug-in's own, with its traceback) is kept."""


def load_object(path: str) -> Any:
    """The object at ``package.module:attribute`` (the attribute may be dotted)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"{path!r} is not an import path package.module:attribute")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        # ModuleNotFoundError names the missing module, which may be a dependency of the plug-in
        raise PluginError(f"cannot import module {module_name!r}: {exc} (is it installed, or on PYTHONPATH?)") from exc
    except Exception as exc:  # a plug-in module that fails on import: one line here, its traceback kept
        raise PluginError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj
