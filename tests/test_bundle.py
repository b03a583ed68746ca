"""The bundle contract: verification at load names the file at fault."""

from __future__ import annotations

import json

import pytest

from serving.core.bundle import BundleError
from serving.recommender import Recommender


def test_corrupt_or_mismatched_bundle_fails_at_load(run_and_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(run_and_bundle[1], bundle)
    with open(bundle / "item_ids.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(BundleError, match="item_ids.json: sha256"):
        Recommender.load(bundle)
    shutil.copyfile(run_and_bundle[1] / "item_ids.json", bundle / "item_ids.json")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["dim"] = 7
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="item_embeddings.npy: expected float32"):
        Recommender.load(bundle)
    (bundle / "index.faiss").unlink()
    with pytest.raises(BundleError, match="index.faiss: missing"):
        Recommender.load(bundle)
