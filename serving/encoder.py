"""The user tower at serving time: a bundle's ONNX graphs run with ONNX Runtime on the CPU. No torch.

Two graphs encode the same history to the same vector: the batch graph takes right-padded rows (batch scoring
runs it, and it is the exact twin for checking); the unpadded graph takes one history without padding, fewer
nodes for the online path, when the bundle has it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.core.bundle import Bundle
from serving.core.history import History
from serving.core.signals import Signals


class UserEncoder:
    """A bundle's user tower: a history (and the user's features, the request's context) -> (D,) vector."""

    def __init__(self, bundle: Bundle, signals: Signals, threads: int = 1) -> None:
        """``threads``: intra-op threads of the online (unpadded) graph; the batch graph runs one thread per
        call, since :mod:`serving.batch` runs ``threads`` of its calls at a time."""
        self.max_len = int(bundle.manifest["max_len"])
        self.signals = signals
        self.session = _session(bundle.onnx_path, 1)
        unpadded = bundle.unpadded_onnx_path
        self.single_session = _session(unpadded, threads) if unpadded is not None else self.session
        self._output = [self.session.get_outputs()[0].name]
        self._run_options = ort.RunOptions()  # reused: run() without one builds a new one per call

    def encode(
        self,
        history: History,
        padded_graph: bool = False,
        features: np.ndarray | None = None,
        context: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        """(D,) float32 user vector from the last ``max_len`` events of a history.

        Runs the unpadded graph when the bundle has one; ``padded_graph=True`` runs the batch graph instead
        (its exact twin, for checking). A model that reads signals also takes the user's ``features`` (F,)
        and the request's ``context``; an empty history with features is the start token's vector."""
        session = self.session if padded_graph else self.single_session
        if not self.signals.inputs:  # the four inputs alone: the graph every bundle without signals has
            return session.run(self._output, history.feeds(self.max_len), self._run_options)[0][0]
        if not len(history):  # features alone: one padding position, read by the start token
            feeds = self.signals.features_only_feeds(features)
            return self.session.run(self._output, feeds, self._run_options)[0][0]
        feeds = self.signals.feeds(self.signals.with_inputs(history, context), self.max_len, features)
        return session.run(self._output, feeds, self._run_options)[0][0]

    def encode_batch(
        self, histories: Sequence[History], features: Sequence[np.ndarray | None] | None = None
    ) -> np.ndarray:
        """(B, D) float32 vectors of right-padded histories through the batch graph (``features``: (F,) a row)."""
        feeds = self.signals.batch_feeds(histories, self.max_len, features)
        return self.session.run(None, feeds)[0]


def _session(path: Path, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session running each call on ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
