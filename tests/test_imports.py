"""Import boundaries: training needs no FAISS / ONNX Runtime; serving imports no torch, Lightning or Hydra."""

from __future__ import annotations

import subprocess
import sys

from twotower.config import PROJECT_ROOT


def test_training_imports_without_faiss_or_onnxruntime():
    code = ("import sys; sys.modules['faiss'] = None; sys.modules['onnxruntime'] = None; "
            "import twotower.train, twotower.batch_predict; print('ok')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_serving_imports_no_torch(run_and_bundle):
    code = (
        "import sys; from serving.recommender import Recommender; r = Recommender.load(sys.argv[1]); r.recommend(k=3); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'lightning', 'hydra')]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(run_and_bundle[1])], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_core_imports_no_runtime_torch_or_web_stack():
    """serving.core is the library both sides share: numpy, pandas and FAISS only."""
    blocked = ("torch", "pytorch_lightning", "hydra", "onnxruntime", "fastapi", "pydantic", "uvicorn")
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
        "import serving.core.bundle, serving.core.history, serving.core.resolve, serving.core.index, "
        "serving.core.selector, serving.core.search, serving.core.intent, serving.core.results, "
        "serving.core.request; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
