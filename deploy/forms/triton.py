"""The model in a Triton model repository, for Triton's onnxruntime or Python backend (deploy/triton.py);
export-attn's --triton-repo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attn_onnx.deploy.bundle import MANIFEST_FILE, MODEL_FILE, bundle_cases
from attn_onnx.deploy.forms.base import OutputForm, Written
from attn_onnx.deploy.triton import CONFIG_FILE, VERSION, check_backend, check_name, write_repository
from attn_onnx.errors import UsageError
from attn_onnx.files import check_output_dir, current_staging
from attn_onnx.model_files import data_file


@dataclass(frozen=True)
class TritonRepo(OutputForm):
    repo: str | Path  # the model repository; the model goes into REPO/NAME
    name: str = ""  # the model's folder and name in the repository; the module kind's where empty
    max_batch_size: int = 8  # Triton's dynamic batching (0: off)
    gpu: bool = False  # a GPU instance group instead of CPU
    backend: str = "onnxruntime"  # onnxruntime or python (vocab.TRITON_BACKENDS)
    max_queue_delay_us: int = 0  # how long the dynamic batcher may hold a request for others to join it

    def target(self, spec) -> Path:
        return Path(self.repo) / (self.name or spec.module)

    def check(self, spec, force: bool) -> None:
        name = self.name or spec.module
        check_name(name)
        check_backend(self.backend, spec.dtype)
        repo = Path(self.repo)
        if repo.exists() and not repo.is_dir():
            raise UsageError(f"{self.what()} {str(repo)!r} is a file; give a folder")
        # the repository may hold other models: only REPO/NAME is ours
        check_output_dir(repo / name if repo.exists() else repo, force, self.what())

    def write(self, model, force: bool) -> Written:
        """detail: {"name": the model's, "backend": Triton's, "golden_sets": how many (python backend: its
        version folder is a bundle), else 0}."""
        repo, txn = Path(self.repo), current_staging()
        if txn is not None and not repo.exists():  # a repository made for this model goes with it
            txn.on_abort.append(lambda: repo.rmdir() if repo.is_dir() and not any(repo.iterdir()) else None)
        name = self.name or model.spec.module
        python = self.backend == "python"
        path = write_repository(
            self.repo,
            model.proto,
            model.spec,
            name=name,
            force=force,
            max_batch_size=self.max_batch_size,
            gpu=self.gpu,
            external=model.external,
            backend=self.backend,
            max_queue_delay_us=self.max_queue_delay_us,
            data=model.data,
            twin=model.twin if python else None,
        )
        files = [CONFIG_FILE, f"{VERSION}/{MODEL_FILE}"]
        if model.external:
            files.append(f"{VERSION}/{data_file(Path(MODEL_FILE)).name}")
        if python:
            files += [f"{VERSION}/model.py", f"{VERSION}/{MANIFEST_FILE}"]
        return Written(
            type(self).__name__,
            Path(path),
            tuple(files),
            {"name": name, "backend": self.backend, "golden_sets": len(bundle_cases(model.spec)) if python else 0},
        )
