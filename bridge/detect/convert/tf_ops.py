"""TensorFlow op → IR translations, and numpy evaluation of ops whose inputs are all constant.

Spatial TF ops are NHWC by default; each is translated literally (Transpose to NCHW, the ONNX
op, Transpose back) and `optimize` removes the transposes afterwards. Keeping the translation
literal makes every handler small and checkable against TF's documented semantics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from bridge.detect.convert.ir import ConversionError
from bridge.detect.convert.tfjs import TF_DTYPES

if TYPE_CHECKING:
    from bridge.detect.convert.onnx_builder import Builder
    from bridge.detect.convert.tfjs import TfNode

Value = str | np.ndarray
Handler = Callable[["Builder", "TfNode"], list[Value]]

TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
ONNX_CAST = {"DT_FLOAT": 1, "DT_INT32": 6, "DT_INT64": 7, "DT_BOOL": 9}


# ---- constant folding ------------------------------------------------------------------------


def _sparse_to_dense(
    idx: np.ndarray, shape: np.ndarray, vals: np.ndarray, default: np.ndarray
) -> np.ndarray:
    dims = [int(s) for s in np.atleast_1d(shape)]
    out = np.full(dims, default, dtype=vals.dtype)
    if idx.size:  # indices are [N, rank], or [N] / scalar for rank 1
        out[tuple(idx.reshape(-1, len(dims)).T)] = vals
    return out


FOLD: dict[str, Callable[..., np.ndarray]] = {
    "Identity": lambda x: x,
    "Add": np.add,
    "AddV2": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Reshape": lambda x, s: x.reshape([int(v) for v in s]),
    "Transpose": lambda x, p: x.transpose([int(v) for v in p]),
    "SparseToDense": _sparse_to_dense,
}


def fold(b: Builder, node: TfNode, args: list[np.ndarray]) -> np.ndarray | None:
    if node.op == "Cast":
        return args[0].astype(TF_DTYPES[node.attr("DstT")])
    if node.op == "ConcatV2":
        return np.concatenate(args[:-1], axis=int(args[-1]))
    if node.op == "Pack":
        return np.stack(args, axis=node.attr("axis", 0))
    fn = FOLD.get(node.op)
    return None if fn is None else np.asarray(fn(*args))


# ---- helpers ---------------------------------------------------------------------------------


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TF SAME: output ceil(size/s); the odd pixel of padding goes at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _pads(
    b: Builder,
    node: TfNode,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: list[int],
    dil: list[int],
) -> list[int]:
    mode = node.attr("padding", "VALID")
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode == "SAME":
        (t, bo), (le, r) = (_same_pads(hw[i], kernel[i], strides[i], dil[i]) for i in range(2))
        return [t, le, bo, r]
    if mode == "EXPLICIT":
        ex = node.attr("explicit_paddings")
        i0 = 1 if node.attr("data_format", "NHWC") == "NHWC" else 2
        return [ex[2 * i0], ex[2 * i0 + 2], ex[2 * i0 + 1], ex[2 * i0 + 3]]
    raise ConversionError(f"{node.name}: padding {mode!r} not supported")


def _spatial(node: TfNode, key: str, default: list[int]) -> list[int]:
    vals = node.attr(key) or default
    return vals[1:3] if node.attr("data_format", "NHWC") == "NHWC" else vals[2:4]


def _nchw(b: Builder, node: TfNode, x: str) -> str:
    if node.attr("data_format", "NHWC") != "NHWC":
        return x
    return b.g.emit("Transpose", f"{node.name}/to_nchw", [x], perm=TO_NCHW)[0]


def _back(b: Builder, node: TfNode, y: str) -> str:
    if node.attr("data_format", "NHWC") != "NHWC":
        return y
    return b.g.emit("Transpose", f"{node.name}/to_nhwc", [y], perm=TO_NHWC)[0]


def _activation(b: Builder, node: TfNode, y: str, op: str) -> str:
    name = f"{node.name}/{op.lower()}"
    if op == "Relu":
        return b.g.emit("Relu", name, [y])[0]
    if op == "Relu6":
        lo, hi = b.scalar(0.0), b.scalar(6.0)
        return b.g.emit("Clip", name, [y, lo, hi])[0]
    if op == "LeakyRelu":
        alpha = node.attr("leakyrelu_alpha", node.attr("alpha", 0.2))
        return b.g.emit("LeakyRelu", name, [y], alpha=float(alpha))[0]
    if op in {"Sigmoid", "Tanh", "Elu"}:
        return b.g.emit(op, name, [y])[0]
    raise ConversionError(f"{node.name}: fused activation {op!r} not supported")


# ---- handlers --------------------------------------------------------------------------------


def conv(b: Builder, node: TfNode) -> list[Value]:
    x = _nchw(b, node, b.tensor(node.inputs[0]))
    w = b.const(node.inputs[1], "filter").astype(np.float32)
    kh, kw, cin, m = w.shape
    if "Depthwise" in node.op:  # [H, W, C, M] → [C*M, 1, H, W], one group per input channel
        weight, group = w.transpose(2, 3, 0, 1).reshape(cin * m, 1, kh, kw), cin
    else:  # HWIO → OIHW; a filter with fewer input channels than x is a grouped conv
        weight, group = w.transpose(3, 2, 0, 1), b.g.shapes[x][1] // cin
    strides, dil = _spatial(node, "strides", [1] * 4), _spatial(node, "dilations", [1] * 4)
    pads = _pads(b, node, b.g.shapes[x][2:4], (kh, kw), strides, dil)
    inputs = [x, b.g.add_const(f"{node.name}/weight", weight)]
    fused = list(node.attr("fused_ops") or [])
    args = node.inputs[2 : 2 + int(node.attr("num_args", 0))]
    if fused[:1] == ["BiasAdd"]:
        inputs.append(b.g.add_const(f"{node.name}/bias", b.const(args[0], "bias")))
        fused = fused[1:]
    elif fused[:1] in (["FusedBatchNorm"], ["FusedBatchNormV3"]):
        scale, offset, mean, var = (b.const(a, "batch norm") for a in args[:4])
        k = (scale / np.sqrt(var + node.attr("epsilon", 1e-3))).astype(np.float32)
        weight = (weight * k[:, None, None, None]).astype(np.float32)
        inputs[1] = b.g.add_const(f"{node.name}/weight", weight)
        inputs.append(b.g.add_const(f"{node.name}/bias", (offset - mean * k).astype(np.float32)))
        fused = fused[1:]
    y = b.g.emit(
        "Conv",
        node.name,
        inputs,
        kernel_shape=[kh, kw],
        strides=strides,
        dilations=dil,
        pads=pads,
        group=group,
    )[0]
    for op in fused:
        y = _activation(b, node, y, op)
    return [_back(b, node, y)]


def pool(b: Builder, node: TfNode) -> list[Value]:
    x = _nchw(b, node, b.tensor(node.inputs[0]))
    k, strides = _spatial(node, "ksize", [1] * 4), _spatial(node, "strides", [1] * 4)
    pads = _pads(b, node, b.g.shapes[x][2:4], (k[0], k[1]), strides, [1, 1])
    op = "MaxPool" if node.op == "MaxPool" else "AveragePool"
    y = b.g.emit(op, node.name, [x], kernel_shape=k, strides=strides, pads=pads)[0]
    return [_back(b, node, y)]


def resize(b: Builder, node: TfNode) -> list[Value]:
    x = _nchw(b, node, b.tensor(node.inputs[0]))  # TF resize ops are always NHWC
    h, w = (int(v) for v in b.const(node.inputs[1], "size"))
    n, c = b.g.shapes[x][:2]
    sizes = b.g.add_const(f"{node.name}/sizes", np.array([n, c, h, w], np.int64))
    if node.attr("align_corners", False):
        coords, nearest = "align_corners", "round_prefer_ceil"
    elif node.attr("half_pixel_centers", False):
        bilinear = node.op == "ResizeBilinear"
        coords = "half_pixel" if bilinear else "tf_half_pixel_for_nn"
        nearest = "floor"
    else:
        coords, nearest = "asymmetric", "floor"
    mode = "linear" if node.op == "ResizeBilinear" else "nearest"
    attrs = {"mode": mode, "coordinate_transformation_mode": coords}
    if mode == "nearest":
        attrs["nearest_mode"] = nearest
    y = b.g.emit("Resize", node.name, [x, "", "", sizes], **attrs)[0]
    return [_back(b, node, y)]


def binary(b: Builder, node: TfNode) -> list[Value]:
    op = {
        "AddV2": "Add",
        "BiasAdd": "Add",
        "RealDiv": "Div",
        "Maximum": "Max",
        "Minimum": "Min",
    }.get(node.op, node.op)
    lhs, rhs = node.inputs[:2]
    if node.op == "BiasAdd" and node.attr("data_format", "NHWC") == "NCHW":
        bias = b.const(rhs, "bias")
        return [
            b.g.emit(
                op,
                node.name,
                [b.tensor(lhs), b.g.add_const(f"{node.name}/bias", bias.reshape(-1, 1, 1))],
            )[0]
        ]
    return [b.g.emit(op, node.name, [b.tensor(lhs), b.tensor(rhs)])[0]]


def unary(b: Builder, node: TfNode) -> list[Value]:
    x = b.tensor(node.inputs[0])
    if node.op == "Softmax":
        return [b.g.emit("Softmax", node.name, [x], axis=-1)[0]]
    if node.op == "Cast":
        dst = ONNX_CAST.get(node.attr("DstT"))
        if dst is None:
            raise ConversionError(f"{node.name}: Cast to {node.attr('DstT')} not supported")
        return [b.g.emit("Cast", node.name, [x], to=dst)[0]]
    if node.op in {"Relu", "Relu6", "LeakyRelu"}:
        return [_activation(b, node, x, node.op)]
    return [b.g.emit(node.op, node.name, [x])[0]]


def concat(b: Builder, node: TfNode) -> list[Value]:
    axis = int(b.const(node.inputs[-1], "axis"))
    parts = [b.tensor(i) for i in node.inputs[:-1]]
    return [b.g.emit("Concat", node.name, parts, axis=axis)[0]]


def reshape(b: Builder, node: TfNode) -> list[Value]:
    shape = b.const(node.inputs[1], "shape").astype(np.int64).reshape(-1)
    if (shape == 0).any():
        raise ConversionError(f"{node.name}: Reshape to a zero-sized dimension {shape}")
    shp = b.g.add_const(f"{node.name}/shape", shape)
    return [b.g.emit("Reshape", node.name, [b.tensor(node.inputs[0]), shp])[0]]


def transpose(b: Builder, node: TfNode) -> list[Value]:
    perm = [int(v) for v in b.const(node.inputs[1], "perm")]
    return [b.g.emit("Transpose", node.name, [b.tensor(node.inputs[0])], perm=perm)[0]]


def pad(b: Builder, node: TfNode) -> list[Value]:
    x = b.tensor(node.inputs[0])
    paddings = b.const(node.inputs[1], "paddings").astype(np.int64)
    pads = b.g.add_const(f"{node.name}/pads", np.concatenate([paddings[:, 0], paddings[:, 1]]))
    if node.op == "MirrorPad":
        if node.attr("mode") != "REFLECT":
            raise ConversionError(f"{node.name}: MirrorPad mode {node.attr('mode')} unsupported")
        return [b.g.emit("Pad", node.name, [x, pads], mode="reflect")[0]]
    inputs = [x, pads]
    if node.op == "PadV2":
        fill = float(b.const(node.inputs[2], "constant_values"))
        inputs.append(b.scalar(fill))
    return [b.g.emit("Pad", node.name, inputs, mode="constant")[0]]


def split(b: Builder, node: TfNode) -> list[Value]:
    if node.op == "SplitV":
        x, axis = b.tensor(node.inputs[0]), int(b.const(node.inputs[2], "split_dim"))
        sizes = [int(v) for v in b.const(node.inputs[1], "size_splits")]
    else:  # Split(axis, value): equal parts
        axis, x = int(b.const(node.inputs[0], "split_dim")), b.tensor(node.inputs[1])
        sizes = [b.g.shapes[x][axis] // node.attr("num_split")] * node.attr("num_split")
    if -1 in sizes:
        sizes[sizes.index(-1)] = b.g.shapes[x][axis] - sum(s for s in sizes if s != -1)
    parts = b.g.add_const(f"{node.name}/split", np.array(sizes, np.int64))
    return list(b.g.emit("Split", node.name, [x, parts], n_out=len(sizes), axis=axis))


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(
        [
            "Conv2D",
            "DepthwiseConv2dNative",
            "_FusedConv2D",
            "FusedDepthwiseConv2dNative",
            "_FusedDepthwiseConv2dNative",
        ],
        conv,
    ),
    **dict.fromkeys(["MaxPool", "AvgPool"], pool),
    **dict.fromkeys(["ResizeBilinear", "ResizeNearestNeighbor"], resize),
    **dict.fromkeys(
        ["Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv", "Maximum", "Minimum"], binary
    ),
    **dict.fromkeys(
        ["Relu", "Relu6", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Softmax", "Cast"], unary
    ),
    "ConcatV2": concat,
    "Reshape": reshape,
    "Transpose": transpose,
    **dict.fromkeys(["Pad", "PadV2", "MirrorPad"], pad),
    **dict.fromkeys(["Split", "SplitV"], split),
}
