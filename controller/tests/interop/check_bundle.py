"""Checks an exported bundle with the ONNX reference tools.

Usage: check_bundle.py BUNDLE_DIR FIXTURE.json

Every graph must pass onnx.checker (full check, with shape inference), and onnxruntime
must reproduce the outputs the Rust runtime computed for the fixture's inputs within
1e-4. Exits non-zero with a message naming the graph and output otherwise.
"""
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

TOL = 1e-4


def main() -> int:
    bundle, fixture = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    manifest = tomllib.loads((bundle / "manifest.toml").read_text())
    for role, case in fixture.items():
        graph = manifest["graphs"][role]
        path = bundle / graph["file"]
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for name, spec in case["inputs"].items():
            dtype = np.int64 if spec["dtype"] == "i64" else np.float32
            feeds[name] = np.array(spec["data"], dtype=dtype).reshape(spec["shape"])
        outputs = sess.run(list(case["outputs"]), feeds)
        for (name, spec), got in zip(case["outputs"].items(), outputs):
            want = np.array(spec["data"], dtype=np.float32).reshape(spec["shape"])
            if got.shape != want.shape:
                print(f"{role}.{name}: shape {got.shape}, expected {want.shape}")
                return 1
            diff = float(np.max(np.abs(got - want)))
            if not diff < TOL:
                print(f"{role}.{name}: max |onnxruntime - rust| = {diff}")
                return 1
            print(f"{role}.{name}: onnx.checker ok, max |onnxruntime - rust| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
