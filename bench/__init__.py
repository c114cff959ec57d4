"""bench-attn's measurements, one module per subcommand: bench.py (variants: the export variants in onnxruntime
against PyTorch, beside the sgemm limit; memory.py, their peak RSS; plot.py, the PNG), runtimes.py, serve.py and
decode.py. Results are data; the CLI (cli/bench_attn.py) prints them. A benchmark, not a test: speed targets live
here, never in timed tests."""
