"""PyTorch: the exported wrapper itself (models.graphs), in float64 as the golden, or at the model's dtype
(float32, float16, bfloat16) to see PyTorch's own error there."""

from __future__ import annotations

import copy

import numpy as np
import torch

from attn_onnx.dtypes import to_numpy, to_torch, torch_dtype
from attn_onnx.errors import UsageError


class TorchRunner:
    """Runs exactly the graph that was exported (the kind's wrapper around the module), at `dtype`."""

    def __init__(self, spec, module: torch.nn.Module | None, dtype: torch.dtype = torch.float64):
        if spec.kind.has_weights and module is None:
            raise UsageError(f"a TorchRunner for module {spec.module!r} needs the module to run")
        self.spec, self.dtype = spec, dtype
        self.name = f"torch/{str(dtype).removeprefix('torch.')}"
        self.precision = str(dtype).removeprefix("torch.")
        module = copy.deepcopy(module).to(dtype).eval() if module is not None else None
        self.graph = spec.kind.graph(spec, module).eval()

    @torch.no_grad()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = []
        for name in self.spec.input_names:
            tensor = to_torch(feeds[name])
            is_data = tensor.is_floating_point() and name != "mask"  # a float mask stays as given
            args.append(tensor.to(self.dtype) if is_data else tensor)
        outputs = self.graph(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {name: to_numpy(out) for name, out in zip(self.spec.output_names, outputs)}


def missing() -> str:
    return ""  # torch is a dependency of the package


def versions() -> dict[str, str]:
    return {"torch": torch.__version__}


def label(provider, config) -> str:
    return "torch"


def make(model, module, config, provider=None) -> TorchRunner:
    return TorchRunner(model.spec, module, torch_dtype(model.spec.dtype))
