"""The browser page (examples/web): served by serve.js on 127.0.0.1, opened in headless Chromium, it checks a
bundle's sha256s, runs every golden set and decode step in onnxruntime-web and POSTs its results back; a
tampered file, a changed vector and changed weights fail. check-attn --bundle DIR --runtimes web runs the
same sets under Node. The screenshots stay under pytest's tmp path (their paths are printed).

Skipped, visibly, where chromium, node or onnxruntime-web (scripts/setup/web.sh) are absent."""

import contextlib
import json
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from attn_onnx.cli.check_attn import main as check
from attn_onnx.deploy.bundle import read_manifest, step_label
from tests.deploy.tamper import change_a_weight, copy_of, flip_a_byte, move_a_value, rehash

WEB_DIR = Path(__file__).resolve().parents[2] / "examples" / "web"
NODE, CHROMIUM = shutil.which("node"), shutil.which("chromium")
needs_node = pytest.mark.skipif(
    NODE is None or not (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir(),
    reason="node or onnxruntime-web is absent: run scripts/setup/web.sh",
)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: run scripts/setup/web.sh")
VIRIDIS_YELLOW, BAR_BLUE = (253, 231, 37), (31, 119, 180)  # examples/web/lib/draw.mjs: a 1 in the mask, a bar


@contextlib.contextmanager
def served(bundle: Path, results: Path, option: str = "--bundle"):
    """serve.js on a free port for `bundle` (a corpus folder with option="--corpus"), writing what the page posts to
    `results`; stopped by its PID."""
    process = subprocess.Popen(
        [NODE, "serve.js", option, str(bundle), "--results", str(results)],
        cwd=WEB_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 15)
        line = process.stdout.readline() if ready else ""
        match = re.match(r"serving (http://127\.0\.0\.1:\d+/) ", line)
        assert match, f"serve.js did not start: {line!r} {process.stderr.read() if process.poll() is not None else ''}"
        yield match[1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def open_page(
    bundle: Path, folder: Path, option: str = "--bundle", query: str = "", timeout: int = 180, budget_ms: int = 60000
) -> tuple[dict, Path]:
    """The results the page posts for `bundle` (served with `option`, the page opened with `query`), and its
    screenshot."""
    results, screenshot = folder / "results.json", folder / "page.png"
    with served(bundle, results, option) as url:
        browser = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={folder / 'profile'}",
                "--window-size=1100,900",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={screenshot}",
                url + query,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        for _ in range(100):  # the post may land just after the screenshot: up to 10 s more
            if results.exists():
                break
            time.sleep(0.1)
    print(f"screenshot of the page: {screenshot}")
    assert results.exists(), f"the page posted no results; chromium said: {browser.stderr[-2000:]}"
    return json.loads(results.read_text()), screenshot


def has_colour(png: Path, rgb: tuple[int, int, int], at_least: int = 50) -> bool:
    from matplotlib.image import imread

    pixels = (imread(png)[..., :3] * 255).round().astype(int)
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= 3).sum()) >= at_least


def set_lines(results: dict) -> list[str]:
    return [line for line in results["lines"] if line.startswith(("PASSED |", "FAILED |"))]


@needs_node
@needs_browser
@pytest.mark.parametrize(
    "args, colour",
    [
        (("--attn-probs",), VIRIDIS_YELLOW),
        (("--kv-cache",), BAR_BLUE),
        (("--kv-cache", "--max-len", "32", "--attention-impl", "ort-gqa"), BAR_BLUE),
    ],
    ids=["attn-probs", "kv-cache", "static-cache"],
)
def test_the_page_passes_every_set_and_decode_step_and_draws_them(bundle_of, tmp_path, args, colour):
    bundle = bundle_of(*args)
    manifest = read_manifest(bundle)
    results, screenshot = open_page(bundle, tmp_path)
    steps = manifest.get("decode", {}).get("steps", [])
    labels = [f"{s['folder']} ({s['case']})" for s in manifest["test_data_sets"]] + [step_label(s) for s in steps]
    assert results["error"] is None, results
    assert (results["passed"], results["failed"]) == (len(labels), 0)
    assert [s["label"] for s in results["sets"]] == labels and all(s["passed"] for s in results["sets"])
    assert all(0 <= s["max_abs"] <= manifest["tolerance"]["atol"] for s in results["sets"])
    assert [re.sub(r"max_abs=\S+", "max_abs=X", line) for line in set_lines(results)] == [
        f"PASSED | onnxruntime-web | {label} | max_abs=X" for label in labels
    ]  # verify.js's line format
    assert results["lines"][-1] == f"{len(labels)} passed, 0 failed"
    assert results["version"] == "1.30.0" and results["backend"] == "wasm"
    assert results["cross_origin_isolated"] is True  # COOP and COEP: WASM threads are possible
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert has_colour(screenshot, colour), f"{screenshot} does not show the picture"  # the mask or the error bars


@needs_node
@needs_browser
def test_tampered_files_are_named_and_nothing_runs(bundle, tmp_path):
    copy = copy_of(bundle, tmp_path)
    flip_a_byte(copy / "model.onnx")
    flip_a_byte(copy / "test_data_set_2" / "output_0.pb")
    results, _ = open_page(copy, tmp_path)
    assert re.fullmatch(
        r"the bundle was changed after it was written: model\.onnx \(sha256 [0-9a-f]{12}\.\.\., the "
        r"manifest says [0-9a-f]{12}\.\.\.\); test_data_set_2/output_0\.pb \(sha256 .*\)",
        results["error"],
    ), results["error"]
    assert results["passed"] == 0 and not set_lines(results)
    assert results["lines"][-1] == f"Error: {results['error']}"


@needs_node
@needs_browser
def test_a_changed_vector_with_a_matching_hash_fails_that_set(bundle, tmp_path):
    copy = copy_of(bundle, tmp_path)
    move_a_value(copy / "test_data_set_2" / "output_0.pb")
    rehash(copy)
    results, _ = open_page(copy, tmp_path)
    assert results["error"] is None and (results["passed"], results["failed"]) == (4, 1)
    failed = [line for line in set_lines(results) if line.startswith("FAILED")]
    assert len(failed) == 1
    assert failed[0].startswith("FAILED | onnxruntime-web | test_data_set_2 (b2.q6.kv6.masked_row)")
    assert "output: max_abs=" in failed[0] and "beyond atol=0.00001, rtol=0.0001" in failed[0]


@needs_node
@needs_browser
def test_changed_weights_fail_every_set_in_the_page(bundle, tmp_path):
    copy = copy_of(bundle, tmp_path)
    change_a_weight(copy)
    results, _ = open_page(copy, tmp_path)
    assert results["error"] is None and (results["passed"], results["failed"]) == (0, 5)
    assert all(line.startswith("FAILED | onnxruntime-web | test_data_set_") for line in set_lines(results))


@needs_node
@pytest.mark.parametrize("change", [None, "weights"])
def test_check_attn_bundle_runs_the_sets_in_web_too(bundle, tmp_path, change):
    folder = bundle
    if change == "weights":
        folder = copy_of(bundle, tmp_path)
        change_a_weight(folder)
    result = CliRunner().invoke(check, ["--bundle", str(folder), "--runtimes", "web"])
    web = [line for line in result.output.splitlines() if "| onnxruntime-web/wasm |" in line]
    assert len(web) == 5, result.output
    if change is None:
        assert result.exit_code == 0 and all(line.startswith("PASSED | onnxruntime-web/wasm | ") for line in web)
    else:  # the hashes match (re-signed); the numbers do not
        assert result.exit_code == 1 and all(line.startswith("FAILED | onnxruntime-web/wasm | ") for line in web)
