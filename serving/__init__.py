"""The serving side: a bundle served in-process or over HTTP with ONNX Runtime and FAISS, no torch.

- ``serving.core``: the torch-free library that training shares (bundle, histories, index, search, intent).
- ``serving.recommender``: :class:`~serving.recommender.Recommender`, one bundle answering requests.
- ``serving.catalog``: items added or taken down since the bundle was built.
- ``serving.live``, ``serving.historystore``, ``serving.store``: the real-time loop (events in, live histories,
  erasure).
- ``serving.app``, ``serving.routes``, ``serving.live_routes``: the HTTP service (``python -m serving``).
- ``serving.batch``, ``serving.batch_job``: top-k for many users at once, to Parquet.
"""
