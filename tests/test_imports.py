"""Import boundaries: training code does not need the serving runtime's FAISS / ONNX Runtime to train."""

from __future__ import annotations

import subprocess
import sys

from twotower.config import PROJECT_ROOT


def test_training_imports_without_faiss_or_onnxruntime():
    code = ("import sys; sys.modules['faiss'] = None; sys.modules['onnxruntime'] = None; "
            "import twotower.train, twotower.batch_predict; print('ok')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
