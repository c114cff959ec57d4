"""Ctrl-C or SIGTERM in the middle of writing a bundle or a Triton model leaves no half-written folder and
no temp names; an earlier folder at that path stays as it was. The signals here are real ones, sent to
this process while the folder is being built."""

import os
import pathlib
import shutil
import signal
import threading
import time

import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from attn_onnx.cli.export_attn import main as export

SMALL = ["--heads", "2", "--embedding-dim", "16"]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def earlier(tmp_path):
    folder = tmp_path / "out"
    assert CliRunner().invoke(export, [*SMALL, "--bundle", str(folder), "--no-check"]).exit_code == 0
    return folder


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler, even where the suite was started with SIGINT ignored (a shell starts a
    background job so, and Python then leaves it ignored); put back afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(
    "signum, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_signal_while_writing_a_bundle_leaves_the_earlier_one(
    earlier, monkeypatch, ctrl_c_raises, signum, code, word
):
    import attn_onnx.deploy.bundle as bundle

    before = snapshot(earlier)
    calls = []
    real = numpy_helper.from_array  # bundle.numpy_helper *is* onnx.numpy_helper: call the original, not the patch

    def signalled(array, name):
        calls.append(name)
        if len(calls) == 6:  # a few vector files in
            os.kill(os.getpid(), signum)
        return real(array, name)

    monkeypatch.setattr(bundle.numpy_helper, "from_array", signalled)
    result = CliRunner().invoke(export, [*SMALL, "--bundle", str(earlier), "--force", "--no-check"])
    assert result.exit_code == code, result.output
    assert result.output.strip() == f"Error: {word}; nothing was written to {earlier}"
    assert len(calls) == 6  # it stopped right there
    assert snapshot(earlier) == before
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["out"]  # no temp folders


def test_sigterm_while_writing_a_triton_model_leaves_nothing(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    real = pathlib.Path.write_text

    def signalled(self, *args, **kwargs):
        if self.name == "config.pbtxt":
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", signalled)
    result = CliRunner().invoke(export, [*SMALL, "--triton-repo", str(repo), "--no-check"])
    assert result.exit_code == 143, result.output
    assert result.output.strip() == f"Error: terminated; nothing was written to {repo / 'mha'}"
    assert list(tmp_path.iterdir()) == []  # no model, no temp name, no repository made for it


def test_the_previous_sigterm_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    CliRunner().invoke(export, ["--help"])
    assert signal.getsignal(signal.SIGTERM) is before


def test_cleanup_does_not_need_the_cli(tmp_path):
    """write_folder_atomic itself removes its temp folder whatever stops the build."""
    from attn_onnx.files import write_folder_atomic

    def build(folder):
        (folder / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomic(tmp_path / "target", build, force=False)
    assert list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "force-over-earlier"])
@pytest.mark.parametrize(
    "signum, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_signal_between_forms_leaves_none_of_them(tmp_path, monkeypatch, ctrl_c_raises, signum, code, word, earlier):
    """The .onnx file is written first, the bundle after: a signal while the bundle is built used to leave the
    file behind, under a message saying nothing was written to it."""
    import attn_onnx.deploy.bundle as bundle

    out, folder = tmp_path / "m.onnx", tmp_path / "b"
    forms = ["--out", str(out), "--bundle", str(folder), "--no-check"]
    if earlier:
        assert CliRunner().invoke(export, [*SMALL, *forms, "--seed", "1"]).exit_code == 0
    before = snapshot(tmp_path)
    real = numpy_helper.from_array

    def signalled(array, name):
        if out.exists() and out.read_bytes() != before.get("m.onnx"):
            raise AssertionError("the .onnx file was written before the bundle")  # old code: exit 1, not code
        os.kill(os.getpid(), signum)  # while the bundle's vectors are written
        return real(array, name)

    monkeypatch.setattr(bundle.numpy_helper, "from_array", signalled)
    result = CliRunner().invoke(export, [*SMALL, *forms, "--seed", "2", *(["--force"] if earlier else [])])
    assert result.exit_code == code, result.output
    assert result.output.strip() == f"Error: {word}; nothing was written to {out} or {folder}"
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == (["b", "m.onnx"] if earlier else [])  # no temp names


@pytest.fixture
def other_thread():
    """A thread that blocks no signal, as onnxruntime's and torch's pools do not: a signal sent to the
    process may land on it, and Python then runs the handler in the main thread at its next bytecode."""
    done = threading.Event()
    worker = threading.Thread(target=done.wait)
    worker.start()
    yield worker
    done.set()
    worker.join()


@pytest.mark.parametrize("lands_on", ["process", "other thread"])
def test_a_signal_during_the_commit_is_held_until_it_is_done_or_undone(tmp_path, ctrl_c_raises, other_thread, lands_on):
    """The renames of a commit are not cut in the middle: a signal arriving during them is delivered once
    they are done, and then undoes them (nothing of the export stays, as its message says). CI caught 'b'
    left behind when the signal, blocked in the main thread only, landed on another thread."""
    from attn_onnx.files import staging

    def send():
        if lands_on == "process":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            signal.pthread_kill(other_thread.ident, signal.SIGINT)

    (tmp_path / "a").write_bytes(b"earlier a")
    with pytest.raises(KeyboardInterrupt):
        with staging(force=True) as txn:
            for name in ("a", "b"):
                staged = txn.temp_folder(tmp_path / name) / name
                staged.write_bytes(b"new " + name.encode())
                txn.put(staged, tmp_path / name)
            real = os.link

            def signalled(src, dst, *args, **kwargs):
                if os.path.basename(dst) == "b":
                    send()  # mid-commit: held back until the steps are done
                result = real(src, dst, *args, **kwargs)
                time.sleep(0.2)  # the signal has landed; an unheld handler would run before the undo is set
                return result

            os.link = signalled
            try:
                txn.commit()
            finally:
                os.link = real
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and (tmp_path / "a").read_bytes() == b"earlier a"
