"""bench-attn's measurements: the export variants in onnxruntime against PyTorch, beside the sgemm limit.
A benchmark, not a test: speed targets live here, never in timed tests."""
