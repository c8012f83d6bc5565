"""Running a version-2 bundle's graphs from Python (ONNX Runtime, CPU, float32) exactly as croco runs them: rows
right-padded, one shared cache buffer per layer and K/V bound as both past and present (written in place), the
logits of each row's last real token. The exporter's parity checks and tests use it."""
from __future__ import annotations

import os

import numpy as np


def ort_session(model):
    """A CPU session of an ONNX file path or ModelProto, every optimisation on, OMP_NUM_THREADS threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def unpad(ids, mask, response_mask=None):
    """Rows of a left-padded batch (the fixtures' layout) as lists, and where each response starts."""
    seqs = [row[m == 1].tolist() for row, m in zip(np.asarray(ids), np.asarray(mask))]
    if response_mask is None:
        return seqs
    starts = [len(s) - int(np.asarray(r).sum()) for s, r in zip(seqs, response_mask)]
    return seqs, starts


def right_pad(seqs, pad_id):
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    return ids


def _run(sess, feeds: dict, weights: dict, outputs: list[str], bound: dict | None = None):
    """Runs with IoBinding: `bound` maps a cache input name to the OrtValue bound as that input and as its
    present output (the same buffer)."""
    binding = sess.io_binding()
    for name, value in {**feeds, **weights}.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name, value in (bound or {}).items():
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), value)
    for name in outputs:
        binding.bind_output(name)
    sess.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[len(bound or {}):]


class Decoder:
    """A decode session over `rows` rows of `capacity` cached positions each."""

    def __init__(self, sess, weights, A, rows, capacity):
        import onnxruntime as ort

        self.sess, self.weights, self.A = sess, weights, A
        shape = (rows, A["num_kv_heads"], capacity, A["head_dim"])
        self.cache = {f"past_key_values.{i}.{part}": ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
                      for i in range(A["num_layers"]) for part in ("key", "value")}

    def step(self, ids, lengths):
        """ids [rows, seq]; lengths[b]: row b's tokens counting its cache and this call. Returns [rows, vocab]."""
        lengths = np.asarray(lengths)
        feeds = {"input_ids": ids, "seqlens_k": (lengths - 1).astype(np.int32),
                 "total_sequence_length": np.array(lengths.max(), np.int32)}
        return _run(self.sess, feeds, self.weights, ["logits"], self.cache)[0]


def greedy(sess, weights, A, seqs, max_new, stop_ids, pad_id):
    """Greedy tokens per row (up to and including the first stop token) and the logits of every step
    [rows, vocab], as transformers' generate: finished rows keep being fed pad."""
    lengths = np.array([len(s) for s in seqs])
    decoder = Decoder(sess, weights, A, len(seqs), int(lengths.max()) + max_new)
    logits = decoder.step(right_pad(seqs, pad_id), lengths)
    done = np.zeros(len(seqs), bool)
    tokens, step_logits = [[] for _ in seqs], []
    for _ in range(max_new):
        step_logits.append(logits)
        nxt = np.where(done, pad_id, logits.argmax(-1))
        for b, t in enumerate(nxt):
            if not done[b]:
                tokens[b].append(int(t))
                done[b] = int(t) in stop_ids
        if done.all():
            break
        lengths = lengths + 1
        logits = decoder.step(nxt[:, None].astype(np.int64), lengths)
    return tokens, step_logits


def logprobs(sess, weights, seqs, starts, pad_id):
    """Per row, the log-prob of each response token (positions starts[b]..) given what precedes it."""
    ids = right_pad(seqs, pad_id)
    width = max(len(s) - st for s, st in zip(seqs, starts))
    positions = np.zeros((len(seqs), max(width, 1)), np.int64)
    targets = np.zeros_like(positions)
    for b, (s, st) in enumerate(zip(seqs, starts)):
        n = len(s) - st
        positions[b, :n] = np.arange(st - 1, len(s) - 1)
        targets[b, :n] = s[st:]
    lengths = np.array([len(s) for s in seqs])
    feeds = {"input_ids": ids, "seqlens_k": (lengths - 1).astype(np.int32),
             "total_sequence_length": np.array(ids.shape[1], np.int32), "target_positions": positions,
             "target_ids": targets}
    out = _run(sess, feeds, weights, ["target_logprobs"])[0]
    return [out[b, :len(s) - st] for b, (s, st) in enumerate(zip(seqs, starts))]


def scores(sess, weights, seqs, pad_id):
    ids = right_pad(seqs, pad_id)
    lengths = np.array([len(s) for s in seqs])
    feeds = {"input_ids": ids, "seqlens_k": (lengths - 1).astype(np.int32),
             "total_sequence_length": np.array(ids.shape[1], np.int32)}
    return _run(sess, feeds, weights, ["score"])[0]
