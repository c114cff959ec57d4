"""--triton-repo DIR: the model in a Triton model repository, for Triton's onnxruntime or Python backend
(deploy/triton.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from attn_onnx.deploy.triton import check_backend, check_name, write_repository
from attn_onnx.errors import UsageError
from attn_onnx.deploy.forms.base import OutputForm
from attn_onnx.files import check_output_dir, current_staging
from attn_onnx.vocab import TRITON_BACKENDS


@dataclass(frozen=True)
class TritonRepo(OutputForm):
    repo: str | Path
    name: str = ""  # the model's folder and name in the repository; the module kind's where empty
    max_batch_size: int = 8
    gpu: bool = False
    backend: str = "onnxruntime"
    max_queue_delay_us: int = 0

    OPTIONS = [
        click.Option(["--triton-repo"], type=click.Path(path_type=Path), default=None, metavar="DIR",
                     help="Write the model into this Triton model repository: REPO/NAME/config.pbtxt and "
                          "REPO/NAME/1/model.onnx (onnxruntime backend)."),
        click.Option(["--triton-max-batch"], type=click.IntRange(min=0), default=8, show_default=True,
                     help="[with --triton-repo] max_batch_size for Triton's dynamic batching (0: off)."),
        click.Option(["--triton-gpu"], is_flag=True, help="[with --triton-repo] A GPU instance group instead of CPU."),
        click.Option(["--triton-backend"], type=click.Choice(TRITON_BACKENDS), default="onnxruntime",
                     show_default=True, help="[with --triton-repo] onnxruntime: Triton's onnxruntime backend "
                     "(NVIDIA's containers); python: its Python backend, with 1/model.py running the model in "
                     "onnxruntime and batching the requests (the tested path here; docs/serving-triton.md)."),
        click.Option(["--triton-max-queue-delay-us"], type=click.IntRange(min=0), default=0, show_default=True,
                     help="[with --triton-repo] How long Triton's dynamic batcher may hold a request for others "
                          "to join its batch, in microseconds (0, Triton's default: only those already queued)."),
    ]
    named = True

    @classmethod
    def from_options(cls, values: dict, name: str) -> TritonRepo | None:
        if values["triton_repo"] is None:
            return None
        return cls(values["triton_repo"], name, values["triton_max_batch"], values["triton_gpu"],
                   values["triton_backend"], values["triton_max_queue_delay_us"])

    def target(self, spec) -> Path:
        return Path(self.repo) / (self.name or spec.module)

    def check(self, spec, force: bool) -> None:
        name = self.name or spec.module
        check_name(name)
        check_backend(self.backend, spec.dtype)
        repo = Path(self.repo)
        if repo.exists() and not repo.is_dir():
            raise UsageError(f"--triton-repo {str(repo)!r} is a file; give a folder")
        # the repository may hold other models: only REPO/NAME is ours
        check_output_dir(repo / name if repo.exists() else repo, force, "--triton-repo")

    def write(self, model, force: bool) -> str:
        repo, txn = Path(self.repo), current_staging()
        if txn is not None and not repo.exists():  # a repository made for this model goes with it
            txn.on_abort.append(lambda: repo.rmdir() if repo.is_dir() and not any(repo.iterdir()) else None)
        path = write_repository(self.repo, model.proto, model.spec, name=self.name or model.spec.module,
                                force=force, max_batch_size=self.max_batch_size, gpu=self.gpu,
                                external=model.external, backend=self.backend,
                                max_queue_delay_us=self.max_queue_delay_us, data=model.data,
                                golden=model.golden if self.backend == "python" else None)
        files = ", 1/model.onnx.data" if model.external else ""
        files += ", 1/model.py, 1/manifest.json and golden vectors" if self.backend == "python" else ""
        return f"wrote Triton model {path}/ ({self.backend} backend: config.pbtxt, 1/model.onnx{files})"
