"""``inertia.optimizers``: serialize / deserialize / get, as ``keras.optimizers``."""

from __future__ import annotations

from typing import Any, Optional

from inertia.loss_scale import LossScaleOptimizer
from inertia.optimizer import Optimizer
from inertia.sgd import SGD

__all__ = ["Optimizer", "SGD", "LossScaleOptimizer", "serialize", "deserialize", "get"]

_BUILTIN = {cls.__name__.lower(): cls for cls in (SGD, LossScaleOptimizer)}
_KNOWN_MODULES = ("inertia.optimizers", "keras.optimizers", "keras.src.optimizers", None)


def serialize(optimizer: Optimizer) -> dict:
    """``{'module', 'class_name', 'config', 'registered_name'}`` for an optimizer."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"Argument `optimizer` must be an inertia.Optimizer. Received: optimizer={optimizer!r}")
    cls = type(optimizer)
    builtin = _BUILTIN.get(cls.__name__.lower()) is cls
    return {
        "module": "inertia.optimizers" if builtin else cls.__module__,
        "class_name": cls.__name__,
        "config": optimizer.get_config(),
        "registered_name": None if builtin else cls.__name__,
    }


def deserialize(config: dict, custom_objects: Optional[dict] = None) -> Optimizer:
    """The optimizer a ``serialize`` dict (inertia's or Keras') describes.

    Class names of built-in optimizers match case-insensitively (``"sgd"``, ``"SGD"``).
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Argument `config` must be a dict with a 'class_name'. Received: config={config!r}")
    class_name = config["class_name"]
    inner = config.get("config", {}) or {}
    custom_objects = custom_objects or {}
    module = config.get("module")
    if class_name in custom_objects:
        cls = custom_objects[class_name]
    elif _is_legacy(module, inner) and isinstance(class_name, str) and class_name.lower() == "sgd":
        from inertia.legacy import SGD as LegacySGD

        inner = {k: v for k, v in inner.items() if k != "is_legacy_optimizer"}
        cls = LegacySGD
    elif isinstance(class_name, str) and class_name.lower() in _BUILTIN:
        if module not in _KNOWN_MODULES and not str(module).startswith(("keras.", "inertia.")):
            raise ValueError(f"Could not interpret optimizer identifier: {config!r} (unknown module {module!r})")
        cls = _BUILTIN[class_name.lower()]
    else:
        raise ValueError(f"Could not interpret optimizer identifier: {class_name!r}")
    return cls.from_config(inner, custom_objects=custom_objects)


def _is_legacy(module: Any, config: dict) -> bool:
    """inertia.legacy's own module, or tf.keras' legacy optimizers (their module, or the
    ``is_legacy_optimizer`` flag tf.keras 2.11+ writes into the config)."""
    return str(module).endswith(".legacy") or config.get("is_legacy_optimizer") is True


def get(identifier: Any) -> Optional[Optimizer]:
    """An optimizer from None, an instance, a name (``"sgd"``) or a serialized dict."""
    if identifier is None:
        return None
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return deserialize({"class_name": identifier, "config": {}})
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")
