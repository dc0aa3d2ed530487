"""Model conversion (a development/CLI tool: needs the `onnx` package, the runtime does not)."""
