"""Measures the cost of keeping weights as graph inputs (croco's choice) against the same graph
with the weights baked in as initializers, on one decode step and one prefill, with ONNX Runtime.

    python -m tools.export.bench_weights data/models/policy
"""
from __future__ import annotations

import os
import sys
import time
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file


def baked_copy(bundle, tmp):
    m = onnx.load(os.path.join(bundle, "decode.float32.onnx"))
    W = load_file(os.path.join(bundle, "model.safetensors"))
    keep = [i for i in m.graph.input if i.name not in W]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for n, a in W.items():
        m.graph.initializer.append(onnx.numpy_helper.from_array(a, n))
    big = sum(a.nbytes for a in W.values()) > (1 << 30)
    onnx.save(m, tmp, save_as_external_data=big, all_tensors_to_one_file=True,
              location=os.path.basename(tmp) + ".data", size_threshold=1024)
    return tmp


def session(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bench(sess, feeds, weights, reps):
    """Times the decode graph as croco runs it: the cache bound as past and present (written in place)."""
    b = sess.io_binding()
    for n, v in {**feeds, **weights}.items():
        b.bind_ortvalue_input(n, v)
        if n.startswith("past_key_values."):
            b.bind_ortvalue_output(n.replace("past_key_values.", "present."), v)
    b.bind_output("logits")
    sess.run_with_iobinding(b)
    t0 = time.perf_counter()
    for _ in range(reps):
        sess.run_with_iobinding(b)
    return (time.perf_counter() - t0) / reps * 1e3


def main(bundle):
    man = tomllib.load(open(os.path.join(bundle, "croco-model.toml"), "rb"))
    A = man["architecture"]
    L, KV, D = A["num_layers"], A["num_kv_heads"], A["head_dim"]
    W = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in load_file(os.path.join(bundle, "model.safetensors")).items()}
    tmp = "/tmp/croco-baked-decode.onnx"
    s_in = session(os.path.join(bundle, "decode.float32.onnx"))
    s_bk = session(baked_copy(bundle, tmp))
    rng = np.random.default_rng(0)
    print(f"{'case':28s} {'weights-as-inputs ms':>22s} {'baked initializers ms':>22s}")
    for B, S, P in [(1, 1, 64), (8, 1, 64), (1, 64, 0), (8, 64, 0)]:
        f = {"input_ids": rng.integers(6, A["vocab_size"], (B, S)).astype(np.int64),
             "seqlens_k": np.full(B, P + S - 1, np.int32), "total_sequence_length": np.array(P + S, np.int32)}
        for i in range(L):
            for kv in ("key", "value"):
                f[f"past_key_values.{i}.{kv}"] = rng.standard_normal((B, KV, P + S, D)).astype(np.float32)
        f = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in f.items()}
        reps = 200 if S == 1 else 20
        a = bench(s_in, f, W, reps)
        b = bench(s_bk, f, {}, reps)
        print(f"batch {B} seq {S:3d} past {P:3d}        {a:22.3f} {b:22.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/models/policy")
