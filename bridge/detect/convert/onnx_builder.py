"""Translate a TF.js graph into ONNX: walk the TF nodes in a fixed order, fold constants,
translate ops (tf_ops), optimise (optimize), serialise reproducibly.

Reproducible means: node and tensor names come from the TF graph, nodes are visited in a stable
topological order, initializers appear in order of first use, producer fields are fixed and
nothing time- or machine-dependent is written, so the same input gives the same bytes.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bridge.detect.convert import tf_ops
from bridge.detect.convert.ir import ConversionError, Graph
from bridge.detect.convert.optimize import optimize
from bridge.detect.convert.tfjs import TfjsGraph, TfNode

OPSET = 13  # Resize/Split/Pad take their parameters as inputs; every onnxruntime ≥1.8 runs it
IR_VERSION = 8
PRODUCER = "obscura-tfjs2onnx"
PRODUCER_VERSION = "1"
ALIASES = {"Identity", "StopGradient", "Snapshot"}


@dataclass
class ConvertOptions:
    input_names: dict[str, str] = field(default_factory=dict)  # TF placeholder → ONNX name
    output_names: dict[str, str] = field(default_factory=dict)  # TF output → ONNX name (order)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    fp16_weights: bool = True
    graph_name: str = "model"
    metadata: dict[str, str] = field(default_factory=dict)
    optimize: bool = True


def _ref(name: str) -> str:
    """TF tensor reference 'node:0' and 'node' are the same tensor."""
    return name[:-2] if name.endswith(":0") else name


class Builder:
    def __init__(self, src: TfjsGraph) -> None:
        self.src = src
        self.g = Graph()
        self.values: dict[str, tf_ops.Value] = {}

    def const(self, ref: str, what: str) -> np.ndarray:
        value = self.values.get(_ref(ref))
        if not isinstance(value, np.ndarray):
            raise ConversionError(f"{ref}: the {what} must be a constant in this converter")
        return value

    def tensor(self, ref: str) -> str:
        value = self.values[_ref(ref)]
        if isinstance(value, np.ndarray):  # a constant used as a data operand
            if value.dtype.kind == "f":
                value = value.astype(np.float32)
            name = self.g.add_const(_ref(ref), value)
            self.values[_ref(ref)] = name
            return name
        return value

    def scalar(self, v: float) -> str:
        return self.g.add_const(f"scalar/{v}", np.array(v, np.float32))

    def run(self, opts: ConvertOptions) -> Graph:
        nodes = _topological(self.src.nodes)
        _check_supported(nodes)
        for node in nodes:
            self._visit(node, opts)
        outs = list(opts.output_names) or list(self.src.outputs)
        if not outs:
            raise ConversionError("the model declares no outputs; name them explicitly")
        for out in outs:
            if _ref(out) not in self.values:
                raise ConversionError(f"output {out} is not produced by the graph")
            self.g.outputs.append(self.tensor(out))
        return self.g

    def _visit(self, node: TfNode, opts: ConvertOptions) -> None:
        if node.op == "Const":
            self.values[node.name] = self.src.weights[node.name]
            return
        if node.op == "Placeholder":
            shape = (
                opts.input_shapes.get(node.name)
                or self.src.inputs.get(node.name)
                or (node.attr("shape") or [])
            )
            shape = tuple(1 if d <= 0 else int(d) for d in shape)
            if not shape:
                raise ConversionError(f"input {node.name} has no static shape; pass input_shapes")
            self.g.shapes[node.name] = shape
            self.g.inputs.append(node.name)
            self.values[node.name] = node.name
            return
        args = [self.values[_ref(i)] for i in node.inputs]
        if node.op in ALIASES:
            self.values[node.name] = args[0]
            return
        if args and all(isinstance(a, np.ndarray) for a in args):
            folded = tf_ops.fold(self, node, args)  # type: ignore[arg-type]
            if folded is not None:
                self.values[node.name] = folded
                return
        outputs = tf_ops.HANDLERS[node.op](self, node)
        for k, out in enumerate(outputs):
            self.values[node.name if k == 0 else f"{node.name}:{k}"] = out


def _topological(nodes: list[TfNode]) -> list[TfNode]:
    """Kahn's algorithm, ties broken by position in model.json: stable for a given file."""
    index = {n.name: i for i, n in enumerate(nodes)}
    deps = {n.name: {i.split(":")[0] for i in n.inputs} for n in nodes}
    for name, d in deps.items():
        missing = d - index.keys()
        if missing:
            raise ConversionError(f"node {name} reads unknown nodes {sorted(missing)}")
    users: dict[str, list[str]] = {}
    for name, d in deps.items():
        for dep in d:
            users.setdefault(dep, []).append(name)
    waiting = {name: len(d) for name, d in deps.items()}
    ready = [index[n] for n, c in waiting.items() if c == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for user in users.get(node.name, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, index[user])
    if len(order) != len(nodes):
        raise ConversionError("the graph has a cycle")
    return order


def _check_supported(nodes: list[TfNode]) -> None:
    known = set(tf_ops.HANDLERS) | ALIASES | {"Const", "Placeholder", "SparseToDense", "Pack"}
    bad = sorted({(n.op, n.name) for n in nodes if n.op not in known})
    if bad:
        listed = ", ".join(f"{op} (node {name})" for op, name in bad[:10])
        raise ConversionError(f"unsupported TF ops: {listed}")


def _rename(g: Graph, old: str, new: str) -> None:
    for node in g.nodes:
        node.inputs = [new if i == old else i for i in node.inputs]
        node.outputs = [new if o == old else o for o in node.outputs]
    g.inputs = [new if i == old else i for i in g.inputs]
    g.outputs = [new if o == old else o for o in g.outputs]
    g.shapes[new] = g.shapes[old]


def to_model(g: Graph, opts: ConvertOptions) -> onnx.ModelProto:
    """Serialise the IR; fp16_weights stores weights that are exactly representable as half."""
    initializers, casts = [], []
    seen: set[str] = set()
    for node in g.nodes:
        for name in node.inputs:
            if name not in g.consts or name in seen:
                continue
            seen.add(name)
            value = g.consts[name]
            half = value.astype(np.float16)
            lossless = (
                value.dtype == np.float32
                and value.size >= 16
                and np.array_equal(half.astype(np.float32), value)
            )
            if opts.fp16_weights and lossless:
                initializers.append(numpy_helper.from_array(half, f"{name}/fp16"))
                casts.append(
                    helper.make_node(
                        "Cast", [f"{name}/fp16"], [name], name=f"{name}/cast", to=TensorProto.FLOAT
                    )
                )
            else:
                initializers.append(numpy_helper.from_array(value, name))
    nodes = casts + [
        helper.make_node(n.op, n.inputs, n.outputs, name=n.name, **n.attrs) for n in g.nodes
    ]

    def info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(g.shapes[name]))

    graph = helper.make_graph(
        nodes,
        opts.graph_name,
        [info(i) for i in g.inputs],
        [info(o) for o in g.outputs],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(sorted(opts.metadata.items())))
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(src: TfjsGraph, opts: ConvertOptions) -> onnx.ModelProto:
    g = Builder(src).run(opts)
    if opts.optimize:
        optimize(g)
    for old, new in opts.input_names.items():
        _rename(g, old, new)
    for old, new in opts.output_names.items():
        _rename(g, g.outputs[list(opts.output_names).index(old)], new)
    return to_model(g, opts)


def serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)
