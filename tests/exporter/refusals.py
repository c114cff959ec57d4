"""export-attn's refusals of options that do not fit, as the exporter's tests assert them."""

from click.testing import CliRunner

from attn_onnx.cli.export_attn import main as export


def assert_refused(tmp_path, args, message):
    """export-attn with `args` exits 2 with one `Error: ...` line holding `message`, and writes nothing."""
    result = CliRunner().invoke(export, [*args, "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert list(tmp_path.iterdir()) == []
