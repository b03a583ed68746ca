"""Torch-free runtime: load a bundle, encode live histories with ONNX Runtime, retrieve with FAISS.

The names below load on first use, so ``serving.history`` (shared with training) imports neither FAISS nor
ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Bundle": "serving.bundle", "BundleError": "serving.bundle", "Recommendation": "serving.recommender",
            "Recommender": "serving.recommender"}  # fmt: skip
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
