"""The torch-free core shared by training and the service: the bundle contract, histories as model inputs,
FAISS indexes and filtered search, the session-intent re-rank and the result types.

Imports numpy, pandas and (for indexes and bundles) FAISS only; never torch, Lightning, Hydra, ONNX Runtime
or the web stack, so training, export and batch jobs can use it without the service.
"""
