"""Name -> constructor lookup for the pluggable parts (backbones, rewards, evaluators).

A registry maps a short name to ``"module:attr"``; the module is imported only when the name is used,
so that a config naming the toy world never imports diffusers' pipelines, and the reverse.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["resolve"]


def resolve(registry: dict[str, str], name: str, kind: str) -> Any:
    """Import the constructor registered as ``"module:attr"`` under ``name``.

    ``name`` may also be a ``"module:attr"`` path itself, so that a user's own backbone or reward
    can be named in a config without editing the registry."""
    target = registry.get(name)
    if target is None and ":" in name:
        target = name
    if target is None:
        raise ValueError(f"{kind}: unknown name {name!r}; available: {', '.join(sorted(registry))} "
                         f"(or a 'module:function' path)")
    module, attr = target.split(":", 1)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{kind}: cannot import {target!r} ({e})") from None
