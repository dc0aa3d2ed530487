"""A small ONNX-shaped intermediate graph with static shapes, rewritten before it is serialised.

Nodes carry ONNX op types and attributes already; constants live in `consts` (they become
initializers). Every tensor has a static shape: the converted models have fixed input sizes,
which lets the converter resolve SAME padding, Resize sizes and -1 in Reshape at build time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Shape = tuple[int, ...]

ELEMENTWISE_UNARY = frozenset({"Sigmoid", "Relu", "LeakyRelu", "Tanh", "Exp", "Clip", "Cast"})
ELEMENTWISE_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min"})


class ConversionError(ValueError):
    """The source graph uses something the converter cannot express (message names the node)."""


@dataclass(slots=True)
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Graph:
    nodes: list[Node] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, Shape] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def add_const(self, name: str, value: np.ndarray) -> str:
        name = self.unique(name)
        self.consts[name] = value
        self.shapes[name] = tuple(value.shape)
        return name

    def unique(self, name: str) -> str:
        used = self.shapes.keys() | {n.name for n in self.nodes}
        if name not in used:
            return name
        k = 1
        while f"{name}_{k}" in used:
            k += 1
        return f"{name}_{k}"

    def emit(
        self, op: str, name: str, inputs: list[str], n_out: int = 1, **attrs: Any
    ) -> list[str]:
        """Append a node, infer its output shapes, return its output names."""
        name = self.unique(name)
        outputs = [name if i == 0 else f"{name}:{i}" for i in range(n_out)]
        node = Node(op, name, inputs, outputs, attrs)
        for out, shape in zip(outputs, infer_shapes(node, self), strict=True):
            self.shapes[out] = shape
        self.nodes.append(node)
        return outputs

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for i in node.inputs:
                users.setdefault(i, []).append(node)
        return users

    def producer(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}


def _conv_like(x: Shape, kernel: Shape, attrs: dict[str, Any]) -> Shape:
    spatial = len(x) - 2
    strides = attrs.get("strides", [1] * spatial)
    dil = attrs.get("dilations", [1] * spatial)
    pads = attrs.get("pads", [0] * (2 * spatial))
    out = []
    for i in range(spatial):
        span = dil[i] * (kernel[i] - 1) + 1
        size = (x[2 + i] + pads[i] + pads[i + spatial] - span) // strides[i] + 1
        if size <= 0:
            raise ConversionError(f"spatial size {size} after a window of {kernel} on {x}")
        out.append(size)
    return tuple(out)


def infer_shapes(node: Node, g: Graph) -> list[Shape]:
    shapes = [g.shapes[i] if i else () for i in node.inputs]
    a = node.attrs
    op = node.op
    if op in ELEMENTWISE_UNARY or op in {"Identity", "Softmax"}:
        return [shapes[0]]
    if op in ELEMENTWISE_BINARY:
        return [tuple(np.broadcast_shapes(*shapes))]
    if op == "Conv":
        w = shapes[1]
        return [(shapes[0][0], w[0], *_conv_like(shapes[0], w[2:], a))]
    if op in {"MaxPool", "AveragePool"}:
        return [(*shapes[0][:2], *_conv_like(shapes[0], tuple(a["kernel_shape"]), a))]
    if op == "Transpose":
        return [tuple(shapes[0][p] for p in a["perm"])]
    if op == "Concat":
        axis = a["axis"] % len(shapes[0])
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return [tuple(out)]
    if op == "Reshape":
        target = [int(v) for v in g.consts[node.inputs[1]]]
        total = int(np.prod(shapes[0]))
        if -1 in target:
            known = int(np.prod([v for v in target if v != -1]))
            target[target.index(-1)] = total // known
        if int(np.prod(target)) != total:
            raise ConversionError(f"{node.name}: cannot reshape {shapes[0]} to {target}")
        return [tuple(target)]
    if op == "Split":
        axis = a["axis"] % len(shapes[0])
        parts = [int(v) for v in g.consts[node.inputs[1]]]
        return [tuple(s if d != axis else p for d, s in enumerate(shapes[0])) for p in parts]
    if op == "Pad":
        pads = [int(v) for v in g.consts[node.inputs[1]]]
        r = len(shapes[0])
        return [tuple(s + pads[d] + pads[d + r] for d, s in enumerate(shapes[0]))]
    if op == "Resize":
        return [tuple(int(v) for v in g.consts[node.inputs[3]])]
    raise ConversionError(f"{node.name}: no shape rule for {op}")
