"""export-attn's models run in onnxruntime at shapes unlike the export's and match float64 PyTorch."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attn_onnx.exporter.spec import MASK_DTYPES, METADATA_PREFIX, ModelSpec
from attn_onnx.models import attention, subsequent_mask

# float32 against float64: the measured worst error of this module is ~1e-6 (see runtime_check.compare).
ATOL = 1e-5
B, Q, KV = 3, 11, 5  # unlike the export's example (2, 3, 4); q_len != kv_len


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def make_mask(kind, dtype):
    rng = np.random.default_rng(0)
    if kind == "full":
        mask = (rng.random((B, Q, KV)) < 0.6).astype(np.uint8)
    elif kind == "padding":  # (batch, 1, kv_len): each example its own valid length
        mask = (np.arange(KV)[None, None, :] < np.array([5, 3, 1])[:, None, None]).astype(np.uint8)
    else:  # one fully-masked query row, the rest attending
        mask = np.ones((B, Q, KV), np.uint8)
        mask[1, 4, :] = 0
    return mask.astype(MASK_DTYPES[dtype])


def mha_inputs(width=512):
    gen = torch.Generator().manual_seed(1)
    return (
        torch.randn(B, Q, width, generator=gen),
        torch.randn(B, KV, width, generator=gen),
        torch.randn(B, KV, width, generator=gen),
    )


def golden(module, q, k, v, mask):
    import copy

    m = copy.deepcopy(module).double()
    with torch.no_grad():
        out = m(q.double(), k.double(), v.double(), None if mask is None else torch.from_numpy(mask))
    return out.numpy(), m.attn.numpy()


@pytest.mark.parametrize("dtype", list(MASK_DTYPES))
@pytest.mark.parametrize("kind", ["full", "padding", "masked_row"])
def test_mha_mask_input_matches_float64_pytorch(exported, kind, dtype):
    path, spec, module = exported(mask_dtype=dtype)
    q, k, v = mha_inputs()
    mask = make_mask(kind, dtype)
    (out,) = session(path).run(None, {"query": q.numpy(), "key": k.numpy(), "value": v.numpy(), "mask": mask})
    expected, probs = golden(module, q, k, v, mask)
    assert out.shape == (B, Q, 512) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    if kind == "masked_row":  # uniform attention: the row's output is the projected mean of the values
        assert np.allclose(probs[1, :, 4, :], 1 / KV)


@pytest.mark.parametrize("mask_mode", ["causal", "none"])
def test_mha_without_mask_input_matches(exported, mask_mode):
    path, spec, module = exported(mask=mask_mode, attn_probs=True)
    q, k, v = mha_inputs()
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["query", "key", "value"]
    out, probs = sess.run(None, {"query": q.numpy(), "key": k.numpy(), "value": v.numpy()})
    mask = torch.tril(torch.ones(Q, KV, dtype=torch.uint8))[None].numpy() if mask_mode == "causal" else None
    expected, expected_probs = golden(module, q, k, v, mask)
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(probs, expected_probs, atol=ATOL, rtol=0)
    if mask_mode == "causal":
        assert np.all(probs[:, :, 1, 2:] == 0) and np.all(probs[:, :, 1, :2] > 0)


def test_mha_attn_probs_output_with_mask_input(exported):
    path, spec, module = exported(attn_probs=True)
    q, k, v = mha_inputs()
    mask = make_mask("padding", "bool")
    out, probs = session(path).run(None, {"query": q.numpy(), "key": k.numpy(), "value": v.numpy(), "mask": mask})
    expected, expected_probs = golden(module, q, k, v, mask)
    assert probs.shape == (B, 8, Q, KV)
    np.testing.assert_allclose(probs, expected_probs, atol=ATOL, rtol=0)
    assert np.all(probs[2, :, :, 1:] == 0)  # example 2 has one valid key


@pytest.mark.parametrize("mask_mode", ["input", "causal", "none"])
def test_attention_module_both_outputs(exported, mask_mode):
    path, spec, _ = exported(module="attention", mask=mask_mode)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, 8, n, 64, generator=gen) for n in (Q, KV, KV))
    feeds = {"query": q.numpy(), "key": k.numpy(), "value": v.numpy()}
    mask = None
    if mask_mode == "input":
        mask = make_mask("masked_row", "bool")[:, None]  # (B, 1, Q, KV)
        feeds["mask"] = mask
    elif mask_mode == "causal":
        mask = torch.tril(torch.ones(Q, KV))[None, None]
    out, probs = session(path).run(None, feeds)
    expected, expected_probs = attention(
        q.double(), k.double(), v.double(), mask=None if mask is None else torch.as_tensor(mask)
    )
    np.testing.assert_allclose(out, expected.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(probs, expected_probs.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [1, 5, 20])
def test_mask_module_equals_subsequent_mask(exported, size):
    path, _, _ = exported(module="mask")
    (mask,) = session(path).run(None, {"size": np.array(size, dtype=np.int64)})
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, subsequent_mask(size).numpy())


def test_model_is_one_self_contained_checked_file_with_named_dims(exported):
    path, spec, _ = exported()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(path.stem)] == [path.name]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert dims == {
        "query": ["batch", "q_len", 512],
        "key": ["batch", "kv_len", 512],
        "value": ["batch", "kv_len", 512],
        "mask": ["batch", "mask_q_len", "kv_len"],
        "output": ["batch", "q_len", 512],
    }
    assert {o.domain: o.version for o in model.opset_import}[""] == 18


def test_metadata_describes_the_model_and_round_trips(exported):
    path, spec, _ = exported()
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props[METADATA_PREFIX + "module"] == "mha"
    assert props[METADATA_PREFIX + "heads"] == "8" and props[METADATA_PREFIX + "embedding_dim"] == "512"
    assert props[METADATA_PREFIX + "mask"] == "input" and props[METADATA_PREFIX + "mask_dtype"] == "bool"
    assert props[METADATA_PREFIX + "mask_convention"] == "nonzero = attend; 0 = masked, filled with -1e9"
    assert props[METADATA_PREFIX + "producer.torch"] == torch.__version__
    assert props[METADATA_PREFIX + "weights_source"] == "random (seed=0)"
    assert set(json.loads(props[METADATA_PREFIX + "weights"])) == {
        f"linears.{i}.{p}" for i in range(4) for p in ("weight", "bias")
    }
    assert ModelSpec.from_metadata(props) == spec


@pytest.mark.parametrize("opset", [17, 23])
def test_opset_is_the_one_asked_for(exported, opset):
    path, _, _ = exported(opset=opset, heads=2, embedding_dim=16)
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == opset
    q = np.zeros((1, 2, 16), np.float32)
    (out,) = session(path).run(None, {"query": q, "key": q, "value": q, "mask": np.ones((1, 1, 2), bool)})
    assert out.shape == (1, 2, 16)


def test_random_weights_differ_between_projections_and_map_one_to_one(exported):
    _, spec, module = exported()
    weights = [module.linears[i].weight for i in range(4)]
    assert all(not torch.equal(weights[i], weights[j]) for i in range(4) for j in range(i + 1, 4))
    assert len({entry["initializer"] for entry in spec.weights.values()}) == 8


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 4), q_len=st.integers(1, 20), kv_len=st.integers(1, 20), padding=st.booleans(), data=st.data()
)
def test_any_shape_and_mask_matches_float64(small_mha, batch, q_len, kv_len, padding, data):
    path, _, module = small_mha
    rows = 1 if padding else q_len
    bits = data.draw(st.lists(st.booleans(), min_size=batch * rows * kv_len, max_size=batch * rows * kv_len))
    mask = np.array(bits, dtype=bool).reshape(batch, rows, kv_len)
    rng = np.random.default_rng(batch * 10_000 + q_len * 100 + kv_len)
    q = rng.standard_normal((batch, q_len, 16), dtype=np.float32)
    kv = rng.standard_normal((batch, kv_len, 16), dtype=np.float32)
    (out,) = _small_session(path).run(None, {"query": q, "key": kv, "value": kv, "mask": mask})
    expected, _ = golden(module, torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv), mask)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)


_SESSIONS = {}


def _small_session(path):
    if path not in _SESSIONS:
        _SESSIONS[path] = session(path)
    return _SESSIONS[path]
