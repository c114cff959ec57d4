"""ort-gqa decides at run time: GroupQueryAttention exactly when the mask is causal AND key padding (square,
every example with a key), ort-mha's path otherwise. Both the decision and each path are checked."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from attn_onnx.runtime_check.cases import Sweep, make_mask
from attn_onnx.runtime_check.check import CheckConfig, check_model
from tests.exporter.refusals import assert_refused
from tests.exporter.test_variants import seed_output, variant_fields


def with_decision(path):
    """The model with the If's condition as an extra output, `fast`."""
    proto = onnx.load(path)
    (branch,) = [n for n in proto.graph.node if n.op_type == "If"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(branch.input[0], onnx.TensorProto.BOOL, []))
    return proto, branch.input[0]


@pytest.mark.parametrize(
    "mask_kind, shape, fast",
    [
        ("causal+padding", (3, 9, 9), True),
        ("causal", (2, 9, 9), True),
        ("ones", (1, 1, 1), True),  # one query, one key: causal and unpadded
        ("ones", (2, 9, 9), False),
        ("masked_row", (3, 9, 9), False),
        ("padding", (3, 9, 9), False),  # (B, 1, kv): no causal part
        ("zeros", (2, 9, 9), False),  # no key at all: every row fully masked, the seed's uniform answer
        ("causal+padding", (3, 9, 5), False),  # cross lengths
    ],
)
def test_the_fast_path_is_taken_exactly_for_causal_padding_masks(exported, mask_kind, shape, fast):
    path, spec, module = exported(**variant_fields("ort-gqa"))
    proto, name = with_decision(path)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    b, q, kv = shape
    feeds = spec.kind.inputs(
        spec,
        {"batch": b, "q_len": q, "kv_len": kv},
        np.random.default_rng(0),
        make_mask(mask_kind, b, q, kv, np.random.default_rng(1)),
    )
    out, decided = session.run(["output", name], feeds)
    assert bool(decided) is fast
    np.testing.assert_allclose(out, seed_output(module, feeds), atol=1e-5, rtol=1e-4)


def test_built_in_causal_takes_the_fast_path_when_square(exported):
    path, spec, module = exported(**variant_fields("ort-gqa", mask="causal"))
    proto, name = with_decision(path)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for (q, kv), fast in (((7, 7), True), ((7, 4), False), ((3, 8), False)):
        feeds = spec.kind.inputs(spec, {"batch": 2, "q_len": q, "kv_len": kv}, np.random.default_rng(0))
        assert bool(session.run([name], feeds)[0]) is fast


def test_forcing_the_fast_path_on_any_mask_is_wrong(exported, tmp_path):
    """The decision matters: GroupQueryAttention is always causal, so taking it for a mask with holes (or no
    causal part) fails the check on square shapes. The honest model passes the same sweep."""
    path, spec, module = exported(**variant_fields("ort-gqa"))
    proto = onnx.load(path)
    (branch,) = [n for n in proto.graph.node if n.op_type == "If"]
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "always"))
    branch.input[0] = "always"
    forced = tmp_path / "forced.onnx"
    onnx.save(proto, forced)
    config = CheckConfig(runtimes=("onnxruntime",), sweep=Sweep(shapes=((1, 7, 7), (3, 9, 9), (2, 33, 33))))
    assert check_model(path, config, module=module).ok
    report = check_model(forced, config, module=module)
    failed = {r.case.rsplit(".", 1)[1] for r in report.failed}
    assert failed == {"ones", "masked_row", "padding", "zeros"}  # causal and causal+padding are GQA's own


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--heads", "8", "--embedding-dim", "32"],
            "--attention-impl ort-gqa needs d_k (embedding-dim / heads) a "
            "multiple of 8, its kernel's constraint; got d_k=4",
        ),
        (["--mask", "none"], "--attention-impl ort-gqa takes --mask input/causal, not none"),
        (["--dtype", "float16"], "--attention-impl ort-gqa takes --dtype float32, not float16"),
    ],
)
def test_refusals(tmp_path, args, message):
    assert_refused(tmp_path, ["--attention-impl", "ort-gqa", *args], message)
