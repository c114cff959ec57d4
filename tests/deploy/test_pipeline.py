"""The one export pipeline (deploy/forms/pipeline.py) and the output forms' registry (deploy/forms/): each step once,
a failing model written nowhere, a form that is one class writing a Written record, and export-attn's options for
each form (cli/forms.py)."""

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from attn_onnx.cli.export_attn import main as export
from attn_onnx.cli.forms import FORM_OPTIONS
from attn_onnx.deploy import FORMS, Bundle, OnnxFile, TritonRepo, export_model
from attn_onnx.deploy.forms import OutputForm, Written
from attn_onnx.errors import ParityError
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.runtime_check.model import load_model
from tests.runtime_check.broken import bias_moved

SMALL = ["--heads", "2", "--embedding-dim", "16"]
ALL_FORMS = ["--out", "m.onnx", "--bundle", "b", "--triton-repo", "r", "--triton-backend", "python"]


@pytest.fixture
def counted(monkeypatch):
    """Calls of ExportSpec.validate and of ModelProto serialization while a test runs. onnx.checker serializes
    the model it is handed to reach its C++ checker: those serializations (building the model, not writing it)
    are taken off the count."""
    counts = {"validate": 0, "serialize": 0}
    validate, serialize, checker = ExportSpec.validate, onnx.ModelProto.SerializeToString, onnx.checker.check_model

    def counting_validate(self):
        counts["validate"] += 1
        return validate(self)

    def counting_serialize(self, *args, **kwargs):
        counts["serialize"] += 1
        return serialize(self, *args, **kwargs)

    def counting_checker(model, *args, **kwargs):
        counts["serialize"] -= isinstance(model, onnx.ModelProto)
        return checker(model, *args, **kwargs)

    monkeypatch.setattr(ExportSpec, "validate", counting_validate)
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", counting_serialize)
    monkeypatch.setattr(onnx.checker, "check_model", counting_checker)
    return counts


@pytest.mark.parametrize("forms", [["--out", "m.onnx"], ALL_FORMS], ids=["out", "out+bundle+triton"])
def test_an_export_validates_the_spec_once_and_serializes_the_model_once(tmp_path, monkeypatch, counted, forms):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export, [*SMALL, *forms])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output  # the check ran, on the same serialized copy the forms wrote
    assert counted == {"validate": 1, "serialize": 1}
    written = [(tmp_path / "m.onnx").read_bytes()]
    if "--bundle" in forms:
        written += [
            (tmp_path / "b" / "model.onnx").read_bytes(),
            (tmp_path / "r" / "mha" / "1" / "model.onnx").read_bytes(),
        ]
    assert len(set(written)) == 1  # one copy, byte for byte, in every form


def test_the_python_api_is_the_pipeline_and_returns_what_it_built(tmp_path, counted):
    spec = ExportSpec(heads=2, embedding_dim=16)
    exported = export_model(
        spec,
        OnnxFile(tmp_path / "m.onnx"),
        Bundle(tmp_path / "b", name="attn"),
        TritonRepo(tmp_path / "r", name="attn", backend="python"),
        seed=3,
    )
    assert counted == {"validate": 1, "serialize": 1}
    assert exported.report.ok and len(exported.report.results) == 18  # the quick sweep, passed
    assert exported.spec.weights and exported.spec.weights_source == "random (seed=3)"
    assert exported.twin is exported.module  # float32: the module's own weights are the model's
    assert list(exported.written) == ["OnnxFile", "Bundle", "TritonRepo"]
    bundle, triton = exported.written["Bundle"], exported.written["TritonRepo"]
    sets = len(list((tmp_path / "b").glob("test_data_set_*")))
    assert (bundle.path, bundle.files, bundle.detail) == (
        tmp_path / "b",
        ("model.onnx", "manifest.json"),
        {"name": "attn", "golden_sets": sets},
    )
    assert triton.path == tmp_path / "r" / "attn" and triton.detail == {
        "name": "attn",
        "backend": "python",
        "golden_sets": sets,
    }
    assert triton.files == ("config.pbtxt", "1/model.onnx", "1/model.py", "1/manifest.json")
    for written in (bundle, triton):  # what it says it wrote is there
        assert all((written.path / name).is_file() for name in written.files), written
    assert load_model(tmp_path / "m.onnx").spec == exported.spec
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["name"] == "attn"
    assert (tmp_path / "r" / "attn" / "1" / "model.py").is_file()


def test_a_model_that_fails_the_check_is_written_in_no_form(tmp_path, monkeypatch):
    monkeypatch.setitem(VARIANTS, "wrong-bias", bias_moved("wrong-bias"))
    spec = ExportSpec(heads=2, embedding_dim=16, variant="wrong-bias")
    with pytest.raises(
        ParityError,
        match=r"fails the parity check \(18 of 18 cases failed\); nothing was written to "
        rf"{tmp_path / 'm.onnx'} or {tmp_path / 'b'}",
    ) as caught:
        export_model(spec, OnnxFile(tmp_path / "m.onnx"), Bundle(tmp_path / "b"))
    assert not caught.value.report.ok and caught.value.report.worst.max_abs == pytest.approx(0.5, abs=1e-6)
    assert list(tmp_path.iterdir()) == []  # no file, no folder, no temp left behind


def test_every_form_s_options_are_export_attn_s_and_refused_without_its_target():
    assert [f.form for f in FORM_OPTIONS.values()] == list(FORMS.values())  # every form has its options
    params = {p.name: p for p in export.params}
    for form in FORM_OPTIONS.values():
        for option in form.options:
            assert params[option.name] is option  # taken from cli/forms.py, not written again in the command
        for option in form.options[1:]:
            flag = option.opts[0]
            result = CliRunner().invoke(
                export, [*SMALL, "--out", "x.onnx", flag, *([] if option.is_flag else [str(option.default or 1)])]
            )
            if form.form is not OnnxFile:
                assert result.exit_code == 2
                assert result.output.strip() == f"Error: {flag} does not apply without {form.flag}"


def test_no_form_knows_click():
    """The forms are settings, checks and writers; their options and printed lines are the CLI's."""
    import sys

    for form in FORMS.values():
        source = Path(sys.modules[form.__module__].__file__).read_text()
        assert "click" not in source and not hasattr(form, "OPTIONS"), form


def test_the_python_api_names_a_form_by_its_class_and_export_attn_by_its_option(tmp_path):
    from attn_onnx.errors import UsageError

    (tmp_path / "b").write_text("a file")
    with pytest.raises(UsageError, match=r"^Bundle '.*b' is a file; give a folder$"):
        Bundle(tmp_path / "b").check(ExportSpec(), force=False)
    with pytest.raises(UsageError, match=r"^--bundle '.*b' is a file; give a folder$"):
        Bundle(tmp_path / "b", label="--bundle").check(ExportSpec(), force=False)
    assert Bundle("b", label="--bundle") == Bundle("b")  # the label is how messages name it, not a setting


@dataclasses.dataclass(frozen=True)
class Summary(OutputForm):
    """A form written in a test: a text file naming the model's inputs (what a new form is: this class)."""

    path: Path

    def target(self, spec):
        return Path(self.path)

    def check(self, spec, force):
        pass

    def write(self, model, force):
        Path(self.path).write_text(", ".join(model.spec.input_names))
        return Written("Summary", Path(self.path), (Path(self.path).name,))


def test_a_new_form_is_one_class_the_pipeline_writes_from_the_same_model(tmp_path, counted):
    exported = export_model(
        ExportSpec(heads=2, embedding_dim=16, mask="none"), Summary(tmp_path / "io.txt"), OnnxFile(tmp_path / "m.onnx")
    )
    assert (tmp_path / "io.txt").read_text() == "query, key, value"
    assert exported.written == {
        "Summary": Written("Summary", tmp_path / "io.txt", ("io.txt",)),
        "OnnxFile": Written(
            "OnnxFile", tmp_path / "m.onnx", ("m.onnx",), {"bytes": (tmp_path / "m.onnx").stat().st_size}
        ),
    }
    assert counted["serialize"] == 1


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "force-over-earlier"])
def test_a_failure_committing_the_second_form_leaves_every_target_as_it_was(tmp_path, monkeypatch, earlier):
    """The forms are committed together: when the bundle cannot go into place after the .onnx file did, the
    file is taken back (and an earlier one restored), not left as a half of the export."""
    import os

    monkeypatch.chdir(tmp_path)
    forms = ["--out", "m.onnx", "--bundle", "b", "--no-check"]
    if earlier:
        assert CliRunner().invoke(export, [*SMALL, *forms, "--seed", "1"]).exit_code == 0
    before = tree(tmp_path)
    real, failed = os.rename, []

    def failing(src, dst, *args, **kwargs):
        if os.fspath(dst) in ("b", str(tmp_path / "b")) and os.fspath(src).endswith(".tmp"):  # the bundle's move
            failed.append(dst)
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", failing)
    result = CliRunner().invoke(export, [*SMALL, *forms, "--seed", "2", *(["--force"] if earlier else [])])
    monkeypatch.undo()
    assert failed and result.exit_code == 1, result.output
    assert "No space left on device" in result.output
    assert tree(tmp_path) == before  # the .onnx file taken back or restored; no temp names left


def test_the_python_api_refuses_colliding_forms_before_any_work(tmp_path, counted):
    from attn_onnx.errors import UsageError

    with pytest.raises(UsageError, match="OnnxFile '.*' lies inside Bundle '.*'; give each form"):
        export_model(ExportSpec(heads=2, embedding_dim=16), Bundle(tmp_path / "b"), OnnxFile(tmp_path / "b" / "m.onnx"))
    assert counted["serialize"] == 0 and list(tmp_path.iterdir()) == []
