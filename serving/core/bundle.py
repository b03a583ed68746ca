"""The bundle: the contract between training and serving, and the only code that knows its files.

A bundle is one directory without pickles: ``manifest.json`` (format version, model hyper-parameters, dims,
event vocabulary, index description, counts, metrics, library versions, sha256 of every other file),
``user_tower.onnx``, ``item_embeddings.npy``, ``item_ids.json``, ``items.parquet``, ``histories.parquet``,
``index.faiss`` and ``category_embeddings.npy`` (what gives a new item its vector). Optional: ``users.parquet``
(stored users' features, for a model that reads them; their vocabularies are the manifest's ``signals``);
``user_tower_unpadded.onnx``, the same tower exported for rows without padding (one live history), which
serving prefers for single requests; it has fewer graph nodes and gives the same vectors (checked at export).
:meth:`Bundle.load` verifies checksums and dims and names the file at fault.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
USER_TOWER = "user_tower.onnx"
ITEM_EMBEDDINGS = "item_embeddings.npy"
ITEM_IDS = "item_ids.json"
ITEMS = "items.parquet"
HISTORIES = "histories.parquet"
INDEX = "index.faiss"
CATEGORY_EMBEDDINGS = "category_embeddings.npy"  # (C, D) item-tower category table: vectors for new items
USER_TOWER_UNPADDED = "user_tower_unpadded.onnx"  # optional: (B, L) rows with no padding, single requests
USERS = "users.parquet"  # optional: stored users' features (user_id + one column per feature), as strings
FILES = (USER_TOWER, ITEM_EMBEDDINGS, ITEM_IDS, ITEMS, HISTORIES, INDEX, CATEGORY_EMBEDDINGS)
OPTIONAL_FILES = (USER_TOWER_UNPADDED, USERS)  # checked when the manifest lists them


class BundleError(ValueError):
    """A bundle is missing, corrupt or inconsistent; the message names the file."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(directory: Path) -> dict[str, dict[str, Any]]:
    """{file: {sha256, bytes}} for every bundle file present in ``directory``."""
    return {
        name: {"sha256": sha256(directory / name), "bytes": (directory / name).stat().st_size}
        for name in FILES + OPTIONAL_FILES
        if (directory / name).exists()
    }


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    item_ids: list[str]
    item_vectors: np.ndarray  # (N, D) float32
    items: pd.DataFrame
    histories: pd.DataFrame
    index: faiss.Index
    category_vectors: np.ndarray  # (C, D) float32, row 0 = no category
    users: pd.DataFrame | None = None  # stored users' features (``users.parquet``), when the model reads them

    @property
    def categories(self) -> list[str]:
        return list(self.manifest["categories"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def onnx_path(self) -> Path:
        return self.path / USER_TOWER

    @property
    def unpadded_onnx_path(self) -> Path | None:
        """The single-history graph when the bundle has one (older bundles do not)."""
        return self.path / USER_TOWER_UNPADDED if USER_TOWER_UNPADDED in self.manifest["files"] else None

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Bundle:
        root = Path(path)
        manifest_file = root / MANIFEST
        if not manifest_file.exists():
            raise BundleError(f"{manifest_file}: not found (is {root} a twotower bundle?)")
        try:
            manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{manifest_file}: not valid JSON ({exc})") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{manifest_file}: format_version {manifest.get('format_version')!r}, this runtime reads {FORMAT_VERSION}"
            )
        listed = manifest.get("files", {})
        for name in FILES + tuple(n for n in OPTIONAL_FILES if n in listed):
            entry = listed.get(name)
            if entry is None or not (root / name).exists():
                raise BundleError(f"{root / name}: missing from the bundle")
            if verify and sha256(root / name) != entry["sha256"]:
                raise BundleError(
                    f"{root / name}: sha256 does not match manifest.json (corrupt or replaced file)"
                )
        item_ids = json.loads((root / ITEM_IDS).read_text())
        vectors = np.load(root / ITEM_EMBEDDINGS, allow_pickle=False)
        dim = int(manifest["dim"])
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape != (len(item_ids), dim):
            raise BundleError(
                f"{root / ITEM_EMBEDDINGS}: expected float32 ({len(item_ids)}, {dim}), got {vectors.dtype} {vectors.shape}"
            )
        index = faiss.read_index(str(root / INDEX))
        if index.ntotal != len(item_ids) or index.d != dim:
            raise BundleError(
                f"{root / INDEX}: holds {index.ntotal} x {index.d}, expected {len(item_ids)} x {dim}"
            )
        items = pd.read_parquet(root / ITEMS)
        if items["item_id"].astype(str).tolist() != item_ids:
            raise BundleError(f"{root / ITEMS}: item order differs from {ITEM_IDS}")
        histories = pd.read_parquet(root / HISTORIES)
        categories = np.load(root / CATEGORY_EMBEDDINGS, allow_pickle=False)
        expected = (len(manifest.get("categories", [])), dim)
        if categories.dtype != np.float32 or categories.shape != expected:
            raise BundleError(
                f"{root / CATEGORY_EMBEDDINGS}: expected float32 {expected}, got {categories.dtype} {categories.shape}"
            )
        users = pd.read_parquet(root / USERS) if USERS in listed else None
        return cls(root, manifest, item_ids, vectors, items, histories, index, categories, users)
