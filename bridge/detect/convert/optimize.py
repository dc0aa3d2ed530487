"""Peephole rewrites that turn a literal NHWC→NCHW translation into a plain NCHW graph.

The literal translation wraps every NHWC op (Conv2D, MaxPool, ResizeBilinear) in a pair of
Transposes. Pushing transposes down through elementwise ops and cancelling inverse pairs
removes nearly all of them; then zero Pads and bias Adds fold into the Conv that uses them.
A transpose is only moved when the rewritten node is its sole consumer, so no tensor that
another node or a graph output reads ever changes value.
"""

from __future__ import annotations

import numpy as np

from bridge.detect.convert.ir import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY, Graph, Node


def optimize(g: Graph) -> None:
    changed = True
    while changed:
        changed = _push_transposes(g) | _merge_transposes(g)
        _prune(g)
    _fold_pads(g)
    _fold_conv_bias(g)
    _prune(g)


def _single_use(g: Graph, tensor: str, users: dict[str, list[Node]]) -> bool:
    return len(users.get(tensor, [])) == 1 and tensor not in g.outputs


def _merge_transposes(g: Graph) -> bool:
    """Transpose(Transpose(x, p1), p2) → Transpose(x, p1[p2]), or x itself when that is identity."""
    prod = g.producer()
    changed = False
    rename: dict[str, str] = {}
    for node in g.nodes:
        if node.op != "Transpose":
            continue
        src = prod.get(node.inputs[0])
        if src is None or src.op != "Transpose":
            continue
        perm = [src.attrs["perm"][p] for p in node.attrs["perm"]]
        if perm == sorted(perm) and node.outputs[0] not in g.outputs:
            rename[node.outputs[0]] = src.inputs[0]
        else:
            node.inputs = [src.inputs[0]]
            node.attrs["perm"] = perm
        changed = True
    _rename_inputs(g, rename)
    return changed


def _rename_inputs(g: Graph, rename: dict[str, str]) -> None:
    if not rename:
        return
    for node in g.nodes:
        node.inputs = [_resolve(rename, i) for i in node.inputs]


def _resolve(rename: dict[str, str], name: str) -> str:
    while name in rename:
        name = rename[name]
    return name


def _push_transposes(g: Graph) -> bool:
    """Move a Transpose below its only consumer when that consumer is layout-agnostic
    (elementwise, Pad, or Concat/binary ops whose other inputs carry the same Transpose)."""
    users = g.consumers()
    prod = g.producer()
    for t in g.nodes:
        if t.op != "Transpose" or not _single_use(g, t.outputs[0], users):
            continue
        user = users[t.outputs[0]][0]
        if len(user.outputs) != 1:
            continue
        perm = list(t.attrs["perm"])
        new_inputs = _permuted_inputs(g, user, t, perm, prod, users)
        if new_inputs is None:
            continue
        # user now computes in t's input layout; t re-applies the permutation after it.
        inner = g.unique(f"{user.name}/nchw")
        g.shapes[inner] = _inverse_shape(g.shapes[user.outputs[0]], perm)
        user.inputs = new_inputs
        if user.op == "Concat":  # concatenating permuted tensors along a = along perm[a]
            user.attrs["axis"] = perm[user.attrs["axis"] % len(perm)]
        out = user.outputs[0]
        user.outputs = [inner]
        t.inputs, t.outputs = [inner], [out]
        g.nodes.remove(t)
        g.nodes.insert(g.nodes.index(user) + 1, t)
        return True
    return False


def _inverse_shape(shape: tuple[int, ...], perm: list[int]) -> tuple[int, ...]:
    out = [0] * len(perm)
    for j, p in enumerate(perm):
        out[p] = shape[j]
    return tuple(out)


def _permuted_inputs(
    g: Graph,
    user: Node,
    t: Node,
    perm: list[int],
    prod: dict[str, Node],
    users: dict[str, list[Node]],
) -> list[str] | None:
    """user's inputs rewritten for t's input layout, or None if user can't be moved above t."""
    if user.op in ELEMENTWISE_UNARY:
        return [t.inputs[0], *user.inputs[1:]]
    if user.op == "Pad" and user.inputs[0] == t.outputs[0] and user.inputs[1] in g.consts:
        pads = g.add_const(f"{user.inputs[1]}/nchw", _permute_pads(g.consts[user.inputs[1]], perm))
        return [t.inputs[0], pads, *user.inputs[2:]]
    if user.op not in ELEMENTWISE_BINARY and user.op != "Concat":
        return None
    inverse = list(np.argsort(perm))
    out = []
    for name in user.inputs:
        if name == t.outputs[0]:
            out.append(t.inputs[0])
        elif name in g.consts and user.op != "Concat":
            c = g.consts[name]
            c = c.reshape((1,) * (len(perm) - c.ndim) + c.shape).transpose(inverse)
            out.append(g.add_const(f"{name}/nchw", np.ascontiguousarray(c)))
        else:
            other = prod.get(name)
            if (
                other is None
                or other.op != "Transpose"
                or other.attrs["perm"] != perm
                or not _single_use(g, name, users)
            ):
                return None
            out.append(other.inputs[0])  # both operands drop the same transpose
    return out


def _permute_pads(pads: np.ndarray, perm: list[int]) -> np.ndarray:
    r = len(perm)
    new = np.zeros_like(pads)
    for j, p in enumerate(perm):
        new[p], new[p + r] = pads[j], pads[j + r]
    return new


def _fold_pads(g: Graph) -> None:
    """Pad(x) → Conv/MaxPool becomes the consumer's own pads (zeros for Conv, -inf for MaxPool)."""
    users = g.consumers()
    prod = g.producer()
    for node in list(g.nodes):
        if node.op not in {"Conv", "MaxPool"} or "pads" not in node.attrs:
            continue
        pad = prod.get(node.inputs[0])
        if pad is None or pad.op != "Pad" or not _single_use(g, pad.outputs[0], users):
            continue
        if pad.attrs.get("mode", "constant") != "constant" or pad.inputs[1] not in g.consts:
            continue
        fill = g.consts[pad.inputs[2]].item() if len(pad.inputs) > 2 and pad.inputs[2] else 0.0
        if fill != (0.0 if node.op == "Conv" else -np.inf):
            continue
        pads = [int(v) for v in g.consts[pad.inputs[1]]]
        if pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:
            continue  # batch/channel padding or cropping
        own = node.attrs["pads"]
        node.attrs["pads"] = [
            own[0] + pads[2],
            own[1] + pads[3],
            own[2] + pads[6],
            own[3] + pads[7],
        ]
        node.inputs[0] = pad.inputs[0]


def _fold_conv_bias(g: Graph) -> None:
    """Conv(x) + c, c varying along channels only, → Conv(x) with bias."""
    users = g.consumers()
    prod = g.producer()
    rename: dict[str, str] = {}
    for add in g.nodes:
        if add.op != "Add" or len(add.inputs) != 2:
            continue
        consts = [i for i in add.inputs if i in g.consts]
        tensors = [i for i in add.inputs if i not in g.consts]
        if len(consts) != 1 or len(tensors) != 1:
            continue
        conv = prod.get(tensors[0])
        if conv is None or conv.op != "Conv" or not _single_use(g, tensors[0], users):
            continue
        c = g.consts[consts[0]]
        channels = g.shapes[conv.outputs[0]][1]
        c4 = c.reshape((1,) * (4 - c.ndim) + c.shape)
        if c4.ndim != 4 or c4.shape[0] != 1 or c4.shape[2:] != (1, 1) or c4.shape[1] != channels:
            continue
        bias = c4.reshape(channels).astype(np.float32)
        if len(conv.inputs) > 2:
            bias = bias + g.consts[conv.inputs[2]]
        name = g.add_const(f"{conv.name}/bias", bias)
        conv.inputs = [*conv.inputs[:2], name]
        rename[add.outputs[0]] = conv.outputs[0]
        if add.outputs[0] in g.outputs:
            g.outputs[g.outputs.index(add.outputs[0])] = conv.outputs[0]
    _rename_inputs(g, rename)


def _prune(g: Graph) -> None:
    """Drop nodes and constants nothing reaches from the outputs."""
    prod = g.producer()
    live: set[str] = set()
    stack = list(g.outputs)
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        node = prod.get(name)
        if node is not None:
            stack.extend(i for i in node.inputs if i)
            live.update(node.outputs)
    g.nodes = [n for n in g.nodes if any(o in live for o in n.outputs)]
    g.consts = {k: v for k, v in g.consts.items() if k in live}
