"""Read a TensorFlow.js graph model: model.json (topology + weightsManifest) and its .bin shards.

The format: `modelTopology.node` is a TF GraphDef in protobuf-JSON form (attribute values as
{"i": "3"}, {"s": base64}, {"list": {...}}, ...); `weightsManifest` lists groups of shard paths
and the weights stored in them, back to back in manifest order, each shard group concatenated.
Weights may be quantized: float16 (stored as IEEE half) or uint8/uint16 affine (q*scale+min).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# TF DataType enum names (as protobuf-JSON writes them) → numpy dtypes.
TF_DTYPES: dict[str, np.dtype[Any]] = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_HALF": np.dtype(np.float16),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_BOOL": np.dtype(np.bool_),
    "DT_UINT8": np.dtype(np.uint8),
}
_MANIFEST_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANT_DTYPES = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


class TfjsFormatError(ValueError):
    """The files are not a TF.js graph model this reader understands."""


@dataclass(slots=True)
class TfNode:
    name: str
    op: str
    inputs: list[str]  # "node" or "node:k"; control inputs ("^node") are dropped
    attrs: dict[str, Any]  # decoded: int, float, bool, str, dtype, list, shape

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass(slots=True)
class TfjsGraph:
    nodes: list[TfNode]
    weights: dict[str, np.ndarray]  # Const node name → value
    inputs: dict[str, list[int]] = field(default_factory=dict)  # signature name → shape
    outputs: dict[str, list[int]] = field(default_factory=dict)


def _decode_attr(value: dict[str, Any]) -> Any:
    if "list" in value:
        lst = value["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "type" in lst:
            return list(lst["type"])
        return []
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return value["type"]
    if "shape" in value:
        return _shape(value["shape"])
    if "func" in value:
        return value["func"].get("name", "")
    return None  # "tensor" (weights come from the manifest) and empty values


def _shape(proto: dict[str, Any]) -> list[int]:
    if proto.get("unknownRank"):
        return []
    return [int(d.get("size", 0)) for d in proto.get("dim", [])]


def _signature_shapes(section: dict[str, Any]) -> dict[str, list[int]]:
    out = {}
    for key, spec in section.items():
        name = spec.get("name", key).split(":")[0]
        out[name] = _shape(spec.get("tensorShape", {}))
    return out


def read_weights(manifest: list[dict[str, Any]], base: Path) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        buf = b"".join(_read_shard(base, p) for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            value, offset = _decode_weight(spec, buf, offset)
            weights[spec["name"]] = value
        if offset != len(buf):
            raise TfjsFormatError(
                f"weights in {group['paths']}: manifest describes {offset} bytes, shards hold"
                f" {len(buf)}"
            )
    return weights


def _read_shard(base: Path, rel: str) -> bytes:
    path = base / rel
    if not path.is_file():
        raise TfjsFormatError(f"weight shard {path} is missing")
    return path.read_bytes()


def _decode_weight(spec: dict[str, Any], buf: bytes, offset: int) -> tuple[np.ndarray, int]:
    shape = [int(d) for d in spec["shape"]]
    count = int(np.prod(shape)) if shape else 1
    dtype = spec["dtype"]
    quant = spec.get("quantization")
    if quant:
        stored = _QUANT_DTYPES.get(quant["dtype"])
        if stored is None:
            raise TfjsFormatError(f"weight {spec['name']}: unsupported quantization {quant}")
    elif dtype in _MANIFEST_DTYPES:
        stored = _MANIFEST_DTYPES[dtype]
    else:
        raise TfjsFormatError(f"weight {spec['name']}: unsupported dtype {dtype!r}")
    size = count * np.dtype(stored).itemsize
    if offset + size > len(buf):
        raise TfjsFormatError(f"weight {spec['name']}: shards end before its {size} bytes")
    raw = np.frombuffer(buf, dtype=np.dtype(stored).newbyteorder("<"), count=count, offset=offset)
    if quant and quant["dtype"] != "float16":
        # Affine quantization: value = q * scale + min.
        raw = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
    value = raw.astype(_MANIFEST_DTYPES.get(dtype, np.float32)).reshape(shape)
    return value, offset + size


def load_tfjs_graph(model_json: Path) -> TfjsGraph:
    """Parse model.json and its shards (looked up next to it)."""
    try:
        doc = json.loads(model_json.read_text())
    except (OSError, ValueError) as exc:
        raise TfjsFormatError(f"{model_json}: not readable JSON ({exc})") from exc
    topo = doc.get("modelTopology")
    if doc.get("format") not in (None, "graph-model") or not isinstance(topo, dict):
        raise TfjsFormatError(f"{model_json}: not a TF.js graph model (format={doc.get('format')})")
    if topo.get("library", {}).get("function"):
        raise TfjsFormatError(f"{model_json}: graphs with a function library are not supported")
    weights = read_weights(doc.get("weightsManifest", []), model_json.parent)
    nodes = []
    for raw in topo.get("node", []):
        attrs = {k: _decode_attr(v) for k, v in raw.get("attr", {}).items()}
        inputs = [i for i in raw.get("input", []) if not i.startswith("^")]
        nodes.append(TfNode(raw["name"], raw["op"], inputs, attrs))
    for node in nodes:
        if node.op == "Const" and node.name not in weights:
            raise TfjsFormatError(f"{model_json}: Const {node.name} has no weight in the manifest")
    sig = doc.get("signature") or topo.get("signature") or {}
    return TfjsGraph(
        nodes,
        weights,
        _signature_shapes(sig.get("inputs", {})),
        _signature_shapes(sig.get("outputs", {})),
    )
