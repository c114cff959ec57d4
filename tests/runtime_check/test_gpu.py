"""The sweep on onnxruntime's CUDA provider. Runs where onnxruntime-gpu and a GPU are present
(`python -m pytest -m gpu`); skipped visibly elsewhere."""

import onnxruntime as ort
import pytest

from attn_onnx.runtime_check import FLOAT32, TF32, CheckConfig, Sweep, check_model

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="onnxruntime's CUDAExecutionProvider is not available"),
]

SWEEP = Sweep(batches=(1, 3, 8), lengths=(1, 7, 128, 512))


def test_cuda_matches_float64_with_tf32_off(exported):
    path, _, module = exported()
    report = check_model(
        path, CheckConfig(runtimes=("onnxruntime",), providers=("cpu", "cuda"), sweep=SWEEP), module=module
    )
    print(report.summary())
    assert report.passed
    cuda = [r for r in report.results if r.runner == "onnxruntime/cuda"]
    assert cuda and max(r.max_abs for r in cuda) < FLOAT32.atol


def test_cuda_with_tf32_is_held_to_the_tf32_profile(exported):
    path, _, module = exported()
    report = check_model(
        path, CheckConfig(runtimes=("onnxruntime",), providers=("cuda",), sweep=SWEEP, tf32=True), module=module
    )
    print(report.summary())
    assert report.tolerances["onnxruntime/cuda+tf32"] == ("tf32", TF32)
    assert report.passed
