"""Torch-free runtime: load a bundle, encode live histories with ONNX Runtime, retrieve with FAISS."""

from serving.bundle import Bundle, BundleError
from serving.recommender import Recommendation, Recommender

__all__ = ["Bundle", "BundleError", "Recommendation", "Recommender"]
