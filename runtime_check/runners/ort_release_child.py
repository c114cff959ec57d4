"""The far side of ort_release_runner: one onnxruntime release, in a process of its own.

Run as a script, `python ort_release_child.py RELEASE_DIR`: RELEASE_DIR (a `pip install --target` of that
release, and of numpy < 2 for the releases built against numpy 1) goes first on sys.path, so `import
onnxruntime` is that release whatever the interpreter's own site-packages hold. It imports nothing of
attn_onnx: only the standard library, numpy and that onnxruntime.

Frames both ways: a u32 little-endian header length, the JSON header, then the payload bytes it declares.
- hello (sent first): {"onnxruntime": version, "numpy": version}
- {"op": "load", "bytes": n} + the model -> {"ok": true, "outputs": [...]} or {"ok": false, "error": "..."}
- {"op": "run", "inputs": [{"name", "dtype", "shape", "bytes"}], "bytes": n} + the inputs' bytes, in order
  -> {"ok": true, "outputs": [{"name", "dtype", "shape", "bytes"}], "bytes": n} + their bytes, or ok false
The process ends when its stdin closes.
"""

import json
import struct
import sys


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import onnxruntime as ort

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def send(header: dict, payload: bytes = b"") -> None:
        text = json.dumps({**header, "bytes": len(payload)}).encode()
        stdout.write(struct.pack("<I", len(text)) + text + payload)
        stdout.flush()

    def receive():
        head = stdin.read(4)
        if len(head) < 4:
            return None, b""
        header = json.loads(stdin.read(struct.unpack("<I", head)[0]))
        return header, stdin.read(header.get("bytes", 0))

    send({"onnxruntime": ort.__version__, "numpy": np.__version__})
    session = None
    while True:
        header, payload = receive()
        if header is None:
            return
        try:
            if header["op"] == "load":
                session = None  # a model that fails to load leaves none, not the one before
                options = ort.SessionOptions()
                options.log_severity_level = 4
                options.intra_op_num_threads = 1  # the same answers on every machine, and no spinning
                session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
                send({"ok": True, "outputs": [o.name for o in session.get_outputs()]})
            elif session is None:  # a run before any load, or after one that failed
                raise RuntimeError("no model is loaded")
            else:
                feeds, at = {}, 0
                for spec in header["inputs"]:
                    feeds[spec["name"]] = np.frombuffer(
                        payload, spec["dtype"], offset=at, count=spec["bytes"] // np.dtype(spec["dtype"]).itemsize
                    ).reshape(spec["shape"])
                    at += spec["bytes"]
                names = [o.name for o in session.get_outputs()]
                outputs = [np.ascontiguousarray(v) for v in session.run(names, feeds)]
                specs = [
                    {"name": n, "dtype": v.dtype.str, "shape": list(v.shape), "bytes": v.nbytes}
                    for n, v in zip(names, outputs)
                ]
                send({"ok": True, "outputs": specs}, b"".join(v.tobytes() for v in outputs))
        except Exception as exc:
            send({"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()}"})


if __name__ == "__main__":
    main()
