"""Models with external data: written beside the model under a relative name, checked where they lie,
still working after their folder moves, carried by the bundle and the Triton model; data that points
elsewhere is refused before any runtime reads it."""

import json
import os
import shutil

import onnx
import pytest
from click.testing import CliRunner

import attn_onnx.model_files as model_files
from attn_onnx.cli.check_attn import main as check
from attn_onnx.cli.export_attn import main as export
from attn_onnx.errors import MetadataError
from attn_onnx.model_files import check_external_data, save_model

SMALL = ["--heads", "2", "--embedding-dim", "64"]


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    folder = tmp_path_factory.mktemp("external") / "first"
    folder.mkdir()
    result = CliRunner().invoke(
        export,
        [
            *SMALL,
            "--external-data",
            "--out",
            str(folder / "m.onnx"),
            "--bundle",
            str(folder / "bundle"),
            "--triton-repo",
            str(folder / "repo"),
        ],
    )
    assert result.exit_code == 0, result.output
    return folder


def locations(path):
    proto = onnx.load(path, load_external_data=False)
    return {e.value for i in proto.graph.initializer for e in i.external_data if e.key == "location"}


def test_the_weights_lie_beside_the_model_under_a_relative_name(external):
    assert locations(external / "m.onnx") == {"m.onnx.data"}
    assert (external / "m.onnx").stat().st_size < 64 * 1024  # the graph only
    assert (external / "m.onnx.data").stat().st_size >= 4 * 64 * 64 * 4  # four 64x64 float32 projections
    assert sorted(p.name for p in external.iterdir()) == ["bundle", "m.onnx", "m.onnx.data", "repo"]  # no temps


def test_it_checks_clean_and_again_after_the_folder_moves(external, tmp_path):
    assert CliRunner().invoke(check, [str(external / "m.onnx"), "--masks", "masked_row"]).exit_code == 0
    moved = tmp_path / "elsewhere"
    shutil.copytree(external, moved)
    result = CliRunner().invoke(check, [str(moved / "m.onnx"), "--masks", "masked_row"])
    assert result.exit_code == 0, result.output
    assert "onnx-reference" in result.output  # onnx.reference read the weights from beside it too


def test_a_model_whose_data_file_is_missing_is_refused_in_one_line(external, tmp_path):
    shutil.copy(external / "m.onnx", tmp_path / "m.onnx")
    result = CliRunner().invoke(check, [str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert result.output.strip().endswith(
        "which is missing beside the model (move the model with its m.onnx.data file)"
    )


def test_the_bundle_and_the_triton_model_carry_the_data(external):
    manifest = json.loads((external / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["data"]["file"] == "model.onnx.data"
    assert locations(external / "bundle" / "model.onnx") == {"model.onnx.data"}
    assert locations(external / "repo" / "mha" / "1" / "model.onnx") == {"model.onnx.data"}
    result = CliRunner().invoke(check, ["--bundle", str(external / "bundle")])
    assert result.exit_code == 0, result.output


def test_a_changed_data_file_fails_the_bundle(external, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(external / "bundle", bundle)
    with open(bundle / "model.onnx.data", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    result = CliRunner().invoke(check, ["--bundle", str(bundle)])
    assert result.exit_code == 1 and "model.onnx.data (sha256" in result.output


def test_past_two_gib_the_data_goes_beside_the_model_by_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(model_files, "MAX_SINGLE_FILE_BYTES", 10_000)  # a 2 GiB model, to scale
    result = CliRunner().invoke(export, [*SMALL, "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "weights in m.onnx.data" in result.output and locations(tmp_path / "m.onnx") == {"m.onnx.data"}


def test_saving_leaves_the_model_in_memory_as_it_was(external, tmp_path):
    proto = onnx.load(external / "m.onnx")  # weights loaded back into memory
    before = proto.SerializeToString()
    save_model(proto, tmp_path / "x.onnx", external=True)
    assert proto.SerializeToString() == before


def hostile(folder, location, offset=0, length=None):
    """A copy of the model whose first external tensor points at `location`."""
    proto = onnx.load(folder / "m.onnx", load_external_data=False)
    init = next(i for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL)
    info = {e.key: e for e in init.external_data}
    info["location"].value, info["offset"].value = location, str(offset)
    if length is not None:
        info["length"].value = str(length)
    return proto


@pytest.mark.parametrize(
    "location, expected",
    [
        ("/etc/passwd", "external data must be a file name beside the model"),
        ("../secret.bin", "external data must be a file name beside the model"),
        ("sub/m.onnx.data", "external data must be a file name beside the model"),
        ("link.data", "a symlink"),
        ("hard.data", "a file with other hard links"),
    ],
)
def test_data_that_points_elsewhere_is_refused_before_any_runtime_reads_it(external, tmp_path, location, expected):
    shutil.copy(external / "m.onnx.data", tmp_path / "m.onnx.data")
    (tmp_path / "outside.bin").write_bytes(os.urandom(1 << 16))
    os.symlink(tmp_path / "outside.bin", tmp_path / "link.data")
    os.link(tmp_path / "outside.bin", tmp_path / "hard.data")
    proto = hostile(external, location)
    with pytest.raises(MetadataError, match=expected):
        check_external_data(proto, tmp_path, "m.onnx")
    onnx.save(proto, tmp_path / "evil.onnx")
    result = CliRunner().invoke(check, [str(tmp_path / "evil.onnx")])
    assert result.exit_code == 1 and expected in result.output and len(result.output.strip().splitlines()) == 1


def test_a_tensor_past_the_end_of_its_data_file_is_refused(external, tmp_path):
    shutil.copy(external / "m.onnx.data", tmp_path / "m.onnx.data")
    size = (tmp_path / "m.onnx.data").stat().st_size
    with pytest.raises(MetadataError, match=f"past the file's {size} bytes"):
        check_external_data(hostile(external, "m.onnx.data", offset=size - 8, length=64), tmp_path, "m.onnx")


def test_the_node_verifier_runs_a_bundle_with_external_data(external):
    """onnxruntime-node opens model.onnx by path and finds model.onnx.data beside it; the manifest's hash
    of the data file is checked too."""
    import subprocess

    from tests.deploy.test_node import NODE, NODE_DIR

    if NODE is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("node or onnxruntime-node is not installed (npm ci --ignore-scripts --prefix examples/node)")
    result = subprocess.run(
        [NODE, "verify.js", str(external / "bundle")], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("5 passed, 0 failed")


def test_a_model_that_appears_while_working_is_not_replaced_and_no_data_is_left(external, tmp_path, monkeypatch):
    """Without --force, commit never clobbers, even a model that appears after the data went into place (the
    moment between a check and a rename); the data it placed is taken back."""
    from attn_onnx.errors import OutputExistsError
    from attn_onnx.model_files import staged_model

    proto = onnx.load(external / "m.onnx")
    out = tmp_path / "m.onnx"
    for name in ("link", "replace"):  # whichever the commit uses, the model appears just before it
        real = getattr(os, name)

        def racing(src, dst, real=real):
            if os.path.basename(dst) == "m.onnx" and not out.exists():
                out.write_bytes(b"someone else's")
            return real(src, dst)

        monkeypatch.setattr(model_files.os, name, racing)
    with staged_model(proto, out, external=True) as (_, commit):
        with pytest.raises(OutputExistsError, match="exists; pass --force"):
            commit(force=False)
    assert out.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no data file, no temp folder


@pytest.mark.parametrize("inject", [True, False], ids=["failure-between-the-renames", "clean"])
def test_force_replaces_the_model_and_its_data_as_a_pair(tmp_path, monkeypatch, inject):
    """--force over an earlier external export: the data file and the model are two renames. The data used to
    go first, so a crash between them left the old model reading the new weights. Every rename, link and
    replace is watched: before and after each, the model on disk (if any) is one of the two whole pairs; a
    failure injected just before the model goes into place leaves the earlier pair, which still checks."""
    new_folder, folder = tmp_path / "new", tmp_path / "out"
    new_folder.mkdir()
    folder.mkdir()
    out = folder / "m.onnx"
    for where, seed in ((folder, "1"), (new_folder, "2")):
        result = CliRunner().invoke(
            export, [*SMALL, "--external-data", "--no-check", "--seed", seed, "--out", str(where / "m.onnx")]
        )
        assert result.exit_code == 0, result.output

    def pair(where):
        return (where / "m.onnx").read_bytes(), (where / "m.onnx.data").read_bytes()

    old, new = pair(folder), pair(new_folder)
    assert old[0] != new[0] and old[1] != new[1]
    seen = []

    def state():
        if not out.exists():
            return "no model"
        current = pair(folder) if (folder / "m.onnx.data").exists() else (out.read_bytes(), None)
        return "old" if current == old else "new" if current == new else "MISMATCHED"

    def watched(name):
        real = getattr(os, name)

        def call(src, dst, *args, **kwargs):
            seen.append(state())
            if inject and os.fspath(dst) == str(out) and os.fspath(src).endswith(f".tmp{os.sep}m.onnx"):
                raise OSError(5, "Input/output error")  # the crash between the data's rename and the model's
            result = real(src, dst, *args, **kwargs)
            seen.append(state())
            return result

        return call

    for name in ("rename", "replace", "link"):
        monkeypatch.setattr(os, name, watched(name))
    result = CliRunner().invoke(
        export, [*SMALL, "--external-data", "--no-check", "--seed", "2", "--force", "--out", str(out)]
    )
    monkeypatch.undo()
    assert "MISMATCHED" not in seen, seen
    assert "new" in seen if not inject else seen[-1] == "old"
    if inject:
        assert result.exit_code == 1 and "Input/output error" in result.output
        assert pair(folder) == old
    else:
        assert result.exit_code == 0, result.output
        assert pair(folder) == new
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temp names
    result = CliRunner().invoke(check, [str(out), "--masks", "masked_row"])
    assert result.exit_code == 0, result.output  # the model on disk loads with its own data, and checks
