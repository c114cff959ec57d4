"""The errors attn-onnx raises on purpose. Library code raises them; only the CLIs turn them into
`Error: ...` lines and exit codes (2 for `UsageError`, 130 for `Interrupted`, 1 for every other one)."""


class AttnOnnxError(Exception):
    """Base of every error attn-onnx raises on purpose."""


class UsageError(AttnOnnxError):
    """The request cannot be served as asked: an option value or combination is invalid."""


class OutputExistsError(UsageError):
    """The output file exists and overwriting it was not asked for."""


class WeightsError(AttnOnnxError):
    """A weights file cannot be read safely, or does not fit the module."""


class ExportError(AttnOnnxError):
    """torch's exporter failed, or wrote a model that does not pass onnx.checker."""


class MetadataError(AttnOnnxError):
    """A model lacks the metadata needed to rebuild its PyTorch reference."""


class InterfaceError(AttnOnnxError):
    """A model's inputs or outputs differ from what its own metadata says they are."""


class ProviderError(AttnOnnxError):
    """A runtime or execution provider that was asked for is not available, or was silently replaced."""


class UnsupportedModelError(AttnOnnxError):
    """A runtime is present but cannot execute this model (an operator domain it does not know, say)."""


class RuntimeFailure(AttnOnnxError):
    """A runtime could not load the model."""


class BundleError(AttnOnnxError):
    """A bundle is incomplete, malformed, or was changed after it was written (a hash differs)."""


class Interrupted(AttnOnnxError):
    """The user interrupted the work (Ctrl-C); the message says what was, and was not, written."""


class ParityError(AttnOnnxError):
    """A runtime's outputs differ from the PyTorch reference beyond tolerance."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name): enough for an `Error: ...` line."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # no terminal colours in an Error: line
    if "## Exception summary" in text:  # torch.export's long reports: the cause is under this heading
        text = text.split("## Exception summary", 1)[1].strip()
    return text.splitlines()[0] if text else type(exc).__name__


def short_error(exc: BaseException) -> str:
    """A runtime's error without its source locations and C++ signatures (the status message remains)."""
    import re

    text = first_line(exc)
    text = re.sub(r"/onnxruntime_src/\S+ (?:\w+ )?onnxruntime::\S+\(.*?\) ", "", text)
    return text if len(text) <= 300 else text[:297] + "..."
