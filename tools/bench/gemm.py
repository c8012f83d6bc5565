"""GEMM throughput of ONNX Runtime's CPU MatMul (MLAS) against PyTorch's (oneDNN/MKL) on this machine, at the
shapes of a ~0.5 B model's training step (2,048 tokens, hidden 1024, MLP 4096), float32: the physical reason the
README gives for croco's CPU tune step against TRL's.

    OMP_NUM_THREADS=2 python tools/bench/gemm.py --threads 2

Prints one line per shape and a last JSON line with GFLOP/s of both."""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _best(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    torch.set_num_threads(a.threads)
    rows = []
    for m, k, n in [(2048, 1024, 4096), (2048, 4096, 1024), (2048, 1024, 1024)]:
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
                                   helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = np.random.rand(m, k).astype(np.float32)
        w = np.random.rand(k, n).astype(np.float32)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        flops = 2.0 * m * k * n
        ort_gf = flops / _best(lambda: sess.run(None, {"a": x, "b": w}), a.repeats) / 1e9
        torch_gf = flops / _best(lambda: torch.matmul(tx, tw), a.repeats) / 1e9
        print(f"[{m} x {k}] @ [{k} x {n}]: onnxruntime {ort_gf:.0f} GFLOP/s, torch {torch_gf:.0f} GFLOP/s, "
              f"ratio {ort_gf / torch_gf:.2f}")
        rows.append({"shape": [m, k, n], "onnxruntime_gflops": ort_gf, "torch_gflops": torch_gf})
    print(json.dumps({"threads": a.threads, "rows": rows}))


if __name__ == "__main__":
    main()
