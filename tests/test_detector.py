"""Detector plugins on real photographs (scikit-image's bundled images) and on synthetic ONNX
models whose outputs are known, so YOLO decoding is checked without downloading a model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from skimage import data

from bridge.detect import registry
from bridge.detect.detectors import Detection, ModelError, load_detector
from bridge.detect.detectors._onnx import nms
from bridge.detect.detectors.base import BUNDLED_DIR, coco80

NANODET = BUNDLED_DIR / "nanodet-m.onnx"


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


@pytest.fixture(scope="module")
def nanodet():
    with registry.load_model("nanodet-m", threads=2) as det:
        yield det


# ---- NanoDet on photographs ------------------------------------------------------------------

# Hand-measured extent of the astronaut in skimage's 512x512 astronaut() (x0, y0, x1, y1).
ASTRONAUT = (0, 10, 370, 512)


def test_astronaut_is_a_person(nanodet) -> None:
    found = nanodet.detect(data.astronaut())
    assert found, "nothing detected"
    best = found[0]
    assert best.label == "person"
    assert best.score >= 0.5
    assert iou(best.box, ASTRONAUT) >= 0.8, best.box


def test_chelsea_is_a_cat(nanodet) -> None:
    img = data.chelsea()
    found = nanodet.detect(img)
    assert found and found[0].label == "cat", found
    assert found[0].score >= 0.45
    x0, y0, x1, y1 = found[0].box
    h, w = img.shape[:2]
    assert (x1 - x0) * (y1 - y0) >= 0.5 * w * h  # the cat fills the picture


def test_region_maps_back_to_full_frame(nanodet) -> None:
    frame = np.full((720, 1280, 3), 40, np.uint8)
    ox, oy = 700, 150
    frame[oy : oy + 512, ox : ox + 512] = data.astronaut()
    region = (ox - 40, oy - 40, ox + 552, oy + 552)  # square-ish area around "motion"
    found = [d for d in nanodet.detect(frame, region) if d.label == "person"]
    assert found and found[0].score >= 0.5
    shifted = (ASTRONAUT[0] + ox, ASTRONAUT[1] + oy, ASTRONAUT[2] + ox, ASTRONAUT[3] + oy)
    assert iou(found[0].box, shifted) >= 0.75, found[0].box
    whole = [d for d in nanodet.detect(frame) if d.label == "person"]
    assert whole and iou(whole[0].box, shifted) >= 0.75


async def test_detect_runs_in_a_worker_thread(nanodet) -> None:
    img = data.astronaut()
    direct = nanodet.detect(img)
    threaded = await asyncio.gather(*(asyncio.to_thread(nanodet.detect, img) for _ in range(3)))
    assert all(t == direct for t in threaded)


def test_nothing_in_an_empty_frame(nanodet) -> None:
    assert nanodet.detect(np.zeros((480, 640, 3), np.uint8)) == []


def test_registry_lists_the_bundled_model(tmp_path: Path) -> None:
    models = registry.list_models(tmp_path)
    default = next(m for m in models if m.default)
    assert default.name == "nanodet-m" and default.kind == "nanodet"
    assert default.labels == coco80() and len(default.labels) == 80
    info = registry.model_info("nanodet-m", tmp_path)
    assert info.sha256 == default.sha256 and info.size_bytes == NANODET.stat().st_size
    assert info.input_size == (416, 416) and "Apache-2.0" in info.license
    json.dumps(info.to_json())


def test_registry_user_models(tmp_path: Path) -> None:
    write_model(tmp_path / "garden.onnx", yolo_graph(np.zeros((1, 6, 10), np.float32)))
    (tmp_path / "garden.json").write_text(json.dumps({"kind": "yolo", "labels": ["fox", "owl"]}))
    info = registry.model_info("garden", tmp_path)
    assert info.kind == "yolo" and info.labels == ("fox", "owl") and not info.bundled
    assert len(info.sha256 or "") == 64
    with registry.load_model("garden", user_dir=tmp_path) as det:
        assert det.labels == ("fox", "owl") and det.input_size == (64, 64)
    with pytest.raises(ModelError, match="no model named 'nope'"):
        registry.model_info("nope", tmp_path)


# ---- broken and incompatible model files ------------------------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model file .*missing\.onnx not found"):
        load_detector("nanodet", tmp_path / "missing.onnx")


def test_corrupt_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ModelError, match=r"garbage\.onnx is not a loadable ONNX model"):
        load_detector("nanodet", bad)


def test_truncated_model_file(tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(NANODET.read_bytes()[: NANODET.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"cut\.onnx is not a loadable ONNX model"):
        load_detector("nanodet", cut)


def test_checksum_mismatch_is_corrupt(tmp_path: Path) -> None:
    raw = bytearray(NANODET.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # still parses; only the checksum can tell
    flipped = tmp_path / "flipped.onnx"
    flipped.write_bytes(bytes(raw))
    expected = registry.model_info("nanodet-m", verify=False).sha256
    with pytest.raises(ModelError, match=r"flipped\.onnx is corrupt: sha256 .* expected"):
        load_detector("nanodet", flipped, sha256=expected)


def test_wrong_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "nhwc.onnx"
    write_model(path, yolo_graph(np.zeros((1, 84, 10), np.float32), input_shape=[1, 64, 64, 3]))
    with pytest.raises(
        ModelError,
        match=r"nhwc\.onnx: input images has shape \[1, 64, 64, 3\], "
        r"expected float32 \[1, 3, H, W\]",
    ):
        load_detector("yolo", path)


def test_unknown_output_layout(tmp_path: Path) -> None:
    path = tmp_path / "odd.onnx"
    write_model(path, yolo_graph(np.zeros((1, 7, 9), np.float32)))
    with pytest.raises(ModelError, match=r"odd\.onnx: unknown NanoDet output layout"):
        load_detector("nanodet", path)
    with pytest.raises(ModelError, match=r"odd\.onnx: unknown YOLO output layout"):
        load_detector("yolo", path, labels=["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])


def test_labels_that_do_not_fit_the_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown NanoDet output layout"):
        load_detector("nanodet", NANODET, labels=["person", "cat"])
    with pytest.raises(ModelError, match="unknown detector kind 'ssd'"):
        load_detector("ssd", NANODET)


# ---- YOLO decoding on synthetic models -------------------------------------------------------


def yolo_graph(
    out: np.ndarray, input_shape: list[int] | None = None, names: str | None = None
) -> onnx.ModelProto:
    """A model whose output is the constant `out` (plus 0 x the input, so the input is used)."""
    shape = input_shape or [1, 3, 64, 64]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "table"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))],
        [
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
            numpy_helper.from_array(out.astype(np.float32), "table"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if names:
        helper.set_model_props(model, {"names": names})
    return model


def write_model(path: Path, model: onnx.ModelProto) -> None:
    path.write_bytes(model.SerializeToString())


# Rows in 64x64 letterbox pixels: cx, cy, w, h, objectness, class, class score.
# A frame of 128x64 is scaled by 0.5 to 64x32 and centred: 16 px of grey above and below.
ROWS = [
    (20, 30, 10, 8, 0.9, 0, 0.8),  # kept: 0.72 person
    (21, 30, 10, 8, 0.9, 0, 0.6),  # same place, same class, lower: suppressed by NMS
    (21, 31, 10, 8, 0.9, 2, 0.7),  # same place, another class: kept (NMS is per class)
    (50, 40, 6, 6, 0.2, 1, 0.9),  # objectness 0.2: below threshold
    (40, 24, 4, 4, 0.9, 1, 0.1),  # class score too low
]


def v5_table(n_classes: int = 80) -> np.ndarray:
    t = np.zeros((1, len(ROWS), 5 + n_classes), np.float32)
    for i, (cx, cy, w, h, obj, cls, score) in enumerate(ROWS):
        t[0, i, :5] = cx, cy, w, h, obj
        t[0, i, 5 + cls] = score
    return t


def v8_table(n_classes: int = 80) -> np.ndarray:
    t = np.zeros((1, 4 + n_classes, len(ROWS)), np.float32)
    for i, (cx, cy, w, h, obj, cls, score) in enumerate(ROWS):
        t[0, :4, i] = cx, cy, w, h
        t[0, 4 + cls, i] = score * obj
    return t


def to_frame(cx: float, cy: float, w: float, h: float) -> tuple[float, ...]:
    r, left, top = 0.5, 0, 16
    return tuple(
        v / r for v in (cx - w / 2 - left, cy - h / 2 - top, cx + w / 2 - left, cy + h / 2 - top)
    )


FRAME = np.zeros((64, 128, 3), np.uint8)


def check(found: list[Detection], labels: tuple[str, str]) -> None:
    assert [d.label for d in found] == list(labels)
    assert found[0].score == pytest.approx(0.72, abs=1e-5)
    assert found[1].score == pytest.approx(0.63, abs=1e-5)
    assert found[0].box == pytest.approx(to_frame(20, 30, 10, 8), abs=1e-3)
    assert found[1].box == pytest.approx(to_frame(21, 31, 10, 8), abs=1e-3)


def test_yolov5_layout(tmp_path: Path) -> None:
    path = tmp_path / "yolov5n.onnx"
    write_model(path, yolo_graph(v5_table()))
    with load_detector("yolo", path, score_threshold=0.3) as det:
        assert det.input_size == (64, 64) and det.labels == coco80()
        check(det.detect(FRAME), ("person", "car"))


def test_yolov8_layout_with_names_from_metadata(tmp_path: Path) -> None:
    path = tmp_path / "yolo11n.onnx"
    names = "{0: 'hedgehog', 1: 'fox', 2: 'badger'}"
    write_model(path, yolo_graph(v8_table(n_classes=3), names=names))
    with load_detector("yolo", path, score_threshold=0.3) as det:
        assert det.labels == ("hedgehog", "fox", "badger")
        check(det.detect(FRAME), ("hedgehog", "badger"))


def test_yolov8_layout_80_classes_and_region(tmp_path: Path) -> None:
    path = tmp_path / "yolov8n.onnx"
    write_model(path, yolo_graph(v8_table()))
    big = np.zeros((300, 400, 3), np.uint8)
    with load_detector("yolo", path, score_threshold=0.3) as det:
        found = det.detect(big, region=(100, 50, 228, 114))  # a 128x64 region, as FRAME
    assert [d.label for d in found] == ["person", "car"]
    x0, y0, x1, y1 = to_frame(20, 30, 10, 8)
    assert found[0].box == pytest.approx((x0 + 100, y0 + 50, x1 + 100, y1 + 50), abs=1e-3)


def test_nms_is_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, classes, 0.9).tolist() == [0, 1, 2, 3]


def test_end_to_end_layout(tmp_path: Path) -> None:
    """Exports with NMS built in: [1, K, 6] rows of x0, y0, x1, y1, score, class."""
    table = np.zeros((1, 4, 6), np.float32)
    table[0, 0] = 15, 26, 25, 34, 0.72, 0
    table[0, 1] = 16, 27, 26, 35, 0.63, 2
    table[0, 2] = 1, 1, 5, 5, 0.1, 3  # padding rows score ~0
    path = tmp_path / "yolov10n.onnx"
    write_model(path, yolo_graph(table))
    with load_detector("yolo", path, score_threshold=0.3) as det:
        check(det.detect(FRAME), ("person", "car"))
