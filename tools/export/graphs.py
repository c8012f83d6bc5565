"""The inference graphs of a version-2 bundle, built from the model's config and tensor shapes with onnx.helper
(as onnxruntime-genai's model builder does), never traced: one decoder layer's nodes, emitted once per layer, so
building a 42-layer graph takes milliseconds and needs no weights in memory.

Every graph takes the weights as inputs (bound by reference at run time, docs/bundle-format.md section 4) and runs
attention in ONNX Runtime's fused `GroupQueryAttention` (rotary inside, grouped KV heads, sliding windows, one
sequence length per row). The decode graph's cache is one buffer per layer and K/V, `[batch, kv_heads, capacity,
head_dim]`, bound as both `past_key_values.*` and `present.*`: the kernel writes each row's new positions into it
in place, and nothing is copied per step. Sequences are right-padded; row b holds `seqlens_k[b] + 1` real tokens
counting its cache, and its positions are 0, 1, ... exactly as transformers counts them.

Linear layers are `Gemm(x, W, transB=1)` on the checkpoint's own `[out, in]` weights (no transposed copy), with
activations kept 2-D `[tokens, hidden]` between the attention calls. Precision: a graph runs in `float32` (CPU),
`float16` or `bfloat16` (CUDA); the norms (`stash_type = 1`), the softmax inside attention, the logits, the
log-softmax and the reward head are float32 in every variant.

Families: llama (EuroLLM), mistral, qwen2, qwen3 (per-head q/k RMS norms), and cohere2 (tiny-aya: one
LayerNorm without bias feeding attention and MLP in parallel, interleaved rotary, sliding-window layers with
rotary and global layers without, logits times `logit_scale`)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 21
MS = "com.microsoft"
PRECISIONS = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "cohere2"}
# GroupQueryAttention's CPU kernel needs head_dim % 16 == 0 (checked by ONNX Runtime at run time).
HEAD_DIM_MULTIPLE = 16


class Graph:
    """Nodes, initializers and io of one ONNX graph, with names made unique by a counter."""

    def __init__(self, name: str, precision: str):
        self.name, self.precision, self.dtype = name, precision, PRECISIONS[precision]
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self.count = 0

    def op(self, op_type, inputs, outputs=1, domain="", **attrs):
        """Adds a node; returns its output name, or the list of names when it has several."""
        self.count += 1
        names = outputs if isinstance(outputs, list) else [f"/{op_type}_{self.count}/{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{op_type}_{self.count}", domain=domain,
                                           **attrs))
        return names[0] if len(names) == 1 else names

    def const(self, name, array):
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, name, values):
        return self.const(name, np.array(values, np.int64))

    def input(self, name, elem_type, shape):
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name, elem_type, shape):
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def model(self, opsets=None, functions=()) -> onnx.ModelProto:
        """The model; opsets: {domain: version} (default: OPSET and com.microsoft 1), functions: its local
        functions."""
        opsets = opsets or {"": OPSET, MS: 1}
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                                  functions=list(functions), producer_name="croco tools/export")
        model.ir_version = 10
        return model


def rotary_caches(inv_freq: np.ndarray, attention_scaling: float, positions: int, precision: str, interleaved: bool):
    """GroupQueryAttention's `cos_cache`/`sin_cache` `[positions, head_dim / 2]`: one angle per frequency (the
    kernel pairs halves or neighbours itself), with the rope type's attention scaling folded in."""
    angles = np.arange(positions, dtype=np.float64)[:, None] * inv_freq.astype(np.float64)[None, :]
    dtype = {"float32": np.float32, "float16": np.float16}.get(precision)
    cos, sin = np.cos(angles) * attention_scaling, np.sin(angles) * attention_scaling
    if dtype is not None:
        return cos.astype(dtype), sin.astype(dtype)
    return bf16_tensor(cos), bf16_tensor(sin)


def bf16_tensor(values: np.ndarray):
    """float64 values as a bfloat16 TensorProto's raw bytes (round to nearest even), wrapped for Graph.const."""
    f32 = values.astype(np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return _Raw(rounded, TensorProto.BFLOAT16, f32.shape)


class _Raw:
    """Raw element bits with their ONNX type: numpy has no bfloat16."""

    def __init__(self, bits, elem_type, shape):
        self.bits, self.elem_type, self.shape = bits, elem_type, shape


def add_initializer(graph: Graph, name, value):
    """Adds value (an array, or bf16_tensor's bits) to the graph's initializers under name; returns name."""
    if isinstance(value, _Raw):
        graph.initializers.append(helper.make_tensor(name, value.elem_type, value.shape, value.bits.tobytes(),
                                                     raw=True))
        return name
    return graph.const(name, value)


class Layers:
    """The transformer body shared by every graph: embeddings, decoder layers, final norm."""

    def __init__(self, graph: Graph, A: dict, weight_names: list[str], rotary: dict):
        self.g, self.A = graph, A
        self.w = set(weight_names)
        self.rotary = rotary
        self.eps = A["layer_norm_eps"] if A["family"] == "cohere2" else A["rms_norm_eps"]
        self.cos = self.sin = None
        if any(A["rotary_layers"]):
            cos, sin = rotary_caches(rotary["inv_freq"], rotary["attention_scaling"], A["max_position_embeddings"],
                                     graph.precision, A["rotary_interleaved"])
            self.cos, self.sin = add_initializer(graph, "cos_cache", cos), add_initializer(graph, "sin_cache", sin)

    def linear(self, x2d, name):
        """x [tokens, in] @ W[out, in]^T (+ bias)."""
        w = name + ".weight"
        bias = name + ".bias"
        inputs = [x2d, w] + ([bias] if bias in self.w else [])
        return self.g.op("Gemm", inputs, transB=1)

    def rms(self, x, weight):
        return self.g.op("SimplifiedLayerNormalization", [x, weight], axis=-1, epsilon=self.eps,
                         stash_type=1)

    def layer_norm(self, x, weight):
        return self.g.op("LayerNormalization", [x, weight], axis=-1, epsilon=self.eps, stash_type=1)

    def attention(self, i, h2d, shape3d, seqlens_k, total, cache):
        """Self-attention of layer i on the normed input h2d [tokens, hidden]; returns [tokens, hidden]. cache:
        (past_key, past_value, present_key, present_value) names, or None (no cache kept)."""
        A, g, p = self.A, self.g, f"model.layers.{i}.self_attn."
        H, KV, D = A["num_attention_heads"], A["num_kv_heads"], A["head_dim"]
        q, k, v = (self.linear(h2d, p + m) for m in ("q_proj", "k_proj", "v_proj"))
        if p + "q_norm.weight" in self.w:  # qwen3: RMS norm per head, before rotary
            q = g.op("Reshape", [self.rms(g.op("Reshape", [q, g.ints(f"/q_heads_{i}", [0, H, D])]), p + "q_norm.weight"),
                                 g.ints(f"/q_flat_{i}", [0, H * D])])
            k = g.op("Reshape", [self.rms(g.op("Reshape", [k, g.ints(f"/k_heads_{i}", [0, KV, D])]), p + "k_norm.weight"),
                                 g.ints(f"/k_flat_{i}", [0, KV * D])])
        q3, k3, v3 = (g.op("Reshape", [t, shape3d]) for t in (q, k, v))
        rotary = A["rotary_layers"][i]
        past = [cache[0], cache[1]] if cache else ["", ""]
        # Without a cache the present outputs are left out: ONNX Runtime kept every layer's until the call
        # ended though nothing read them (~40 % of a scoring batch's peak, measured).
        presents = [cache[2], cache[3]] if cache else []
        inputs = [q3, k3, v3, *past, seqlens_k, total] + ([self.cos, self.sin] if rotary else [])
        attended = f"/attn_{i}"
        g.op("GroupQueryAttention", inputs, [attended, *presents], domain=MS, num_heads=H, kv_num_heads=KV,
             do_rotary=int(rotary), rotary_interleaved=int(A["rotary_interleaved"]),
             local_window_size=A["attention_windows"][i], scale=float(D ** -0.5))
        attn = g.op("Reshape", [attended, g.ints(f"/attn_flat_{i}", [-1, H * D])])
        return self.linear(attn, p + "o_proj")

    def mlp(self, i, h2d):
        p = f"model.layers.{i}.mlp."
        gate = self.linear(h2d, p + "gate_proj")
        up = self.linear(h2d, p + "up_proj")
        act = self.g.op("Mul", [self.g.op("Mul", [gate, self.g.op("Sigmoid", [gate])]), up])  # silu(gate) * up
        return self.linear(act, p + "down_proj")

    def body(self, input_ids, seqlens_k, total, caches=None):
        """Final-normed hidden states [tokens, hidden] (tokens = batch * seq, row-major) of input_ids [batch, seq].
        caches: per layer (past_key, past_value, present_key, present_value) names, or None."""
        A, g = self.A, self.g
        ids = g.op("Reshape", [input_ids, g.ints("/flat", [-1])])
        x = g.op("Gather", ["model.embed_tokens.weight", ids], axis=0)
        batch_seq = g.op("Shape", [input_ids])
        shape3d = g.op("Concat", [batch_seq, g.ints("/minus1", [-1])], axis=0)
        L = A["num_layers"]
        cache = (lambda i: caches[i]) if caches else (lambda i: None)
        if A["family"] == "cohere2":
            for i in range(L):
                h = self.layer_norm(x, f"model.layers.{i}.input_layernorm.weight")
                attn = self.attention(i, h, shape3d, seqlens_k, total, cache(i))
                x = g.op("Add", [g.op("Add", [x, attn]), self.mlp(i, h)])
            return self.layer_norm(x, "model.norm.weight")
        h = self.rms(x, "model.layers.0.input_layernorm.weight")
        residual = x
        for i in range(L):
            attn = self.attention(i, h, shape3d, seqlens_k, total, cache(i))
            h, residual = self.skip_rms(attn, residual, f"model.layers.{i}.post_attention_layernorm.weight")
            down = self.mlp(i, h)
            after = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < L else "model.norm.weight"
            h, residual = self.skip_rms(down, residual, after)
        return h

    def skip_rms(self, x, skip, weight):
        """(RMSNorm(x + skip), x + skip) in one fused op."""
        out, _, _, total = self.g.op("SkipSimplifiedLayerNormalization", [x, skip, weight], 4, domain=MS,
                                     epsilon=self.eps)
        return out, total


def _logits(layers: Layers, hidden2d):
    """float32 logits [rows, vocab] of final hidden states [rows, hidden]."""
    A, g = layers.A, layers.g
    head = "lm_head.weight" if "lm_head.weight" in layers.w else "model.embed_tokens.weight"
    logits = g.op("Gemm", [hidden2d, head], transB=1)
    if g.precision != "float32":
        logits = g.op("Cast", [logits], to=TensorProto.FLOAT)
    if A.get("logit_scale", 1.0) != 1.0:
        logits = g.op("Mul", [logits, g.const("/logit_scale", np.array(A["logit_scale"], np.float32))])
    return logits


def _common_inputs(g: Graph):
    ids = g.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    seqlens = g.input("seqlens_k", TensorProto.INT32, ["batch"])
    total = g.input("total_sequence_length", TensorProto.INT32, [])
    return ids, seqlens, total


def _row_positions(g: Graph, index_per_row, seq_len):
    """Flat indices b * seq + index[b] of one position per row."""
    batch = g.op("Gather", [g.op("Shape", [index_per_row]), g.ints("/zero", [0])], axis=0)
    rows = g.op("Range", [g.ints("/range_start", 0), g.op("Squeeze", [batch]), g.ints("/range_step", 1)])
    return g.op("Add", [g.op("Mul", [rows, seq_len]), index_per_row])


def _seq_len(g: Graph, input_ids):
    return g.op("Squeeze", [g.op("Gather", [g.op("Shape", [input_ids]), g.ints("/one", [1])], axis=0)])


def _add_weights(g: Graph, tensors: list[tuple[str, list[int]]]):
    for name, shape in tensors:
        g.input(name, g.dtype, list(shape))


def decode_graph(A, tensors, rotary, precision) -> onnx.ModelProto:
    """One step of generation for a batch of rows: prefill (right-padded prompts, empty cache), a prompt chunk
    (one row, cache holding its earlier chunks) or a decode step (one token per row, each row its own length).
    Outputs the float32 logits of each row's last real token in this call and writes the cache in place."""
    g = Graph("decode", precision)
    ids, seqlens, total = _common_inputs(g)
    KV, D = A["num_kv_heads"], A["head_dim"]
    caches = []
    for i in range(A["num_layers"]):
        names = (f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value")
        for n in names[:2]:
            g.input(n, g.dtype, ["batch", KV, "capacity", D])
        caches.append(names)
    _add_weights(g, tensors)
    layers = Layers(g, A, [n for n, _ in tensors], rotary)
    hidden = layers.body(ids, seqlens, total, caches)
    # The row's last real token in this call: seqlens_k for a fresh prompt, seq - 1 for a chunk or a step.
    seq = _seq_len(g, ids)
    last = g.op("Min", [g.op("Cast", [seqlens], to=TensorProto.INT64), g.op("Sub", [seq, g.ints("/one_s", 1)])])
    picked = g.op("Gather", [hidden, _row_positions(g, last, seq)], axis=0)
    g.nodes.append(helper.make_node("Identity", [_logits(layers, picked)], ["logits"], name="logits"))
    g.output("logits", TensorProto.FLOAT, ["batch", A["vocab_size"]])
    for i in range(A["num_layers"]):
        for part in ("key", "value"):
            g.output(f"present.{i}.{part}", g.dtype, ["batch", KV, "capacity", D])
    return g.model()


def logprob_graph(A, tensors, rotary, precision) -> onnx.ModelProto:
    """Log-probs of chosen target tokens: for each row, `target_positions[b, j]` is the position whose logits
    predict `target_ids[b, j]` (a response token's position minus one). Only those positions reach the vocabulary
    projection, so prompt positions cost no logits."""
    g = Graph("logprob", precision)
    ids, seqlens, total = _common_inputs(g)
    positions = g.input("target_positions", TensorProto.INT64, ["batch", "targets"])
    targets = g.input("target_ids", TensorProto.INT64, ["batch", "targets"])
    _add_weights(g, tensors)
    layers = Layers(g, A, [n for n, _ in tensors], rotary)
    hidden = layers.body(ids, seqlens, total)
    seq = _seq_len(g, ids)
    batch = g.op("Gather", [g.op("Shape", [ids]), g.ints("/zero_b", [0])], axis=0)
    rows = g.op("Range", [g.ints("/r0", 0), g.op("Squeeze", [batch]), g.ints("/r1", 1)])
    flat = g.op("Add", [g.op("Unsqueeze", [g.op("Mul", [rows, seq]), g.ints("/ax1", [1])]), positions])
    picked = g.op("Gather", [hidden, g.op("Reshape", [flat, g.ints("/flat_t", [-1])])], axis=0)
    logp = g.op("LogSoftmax", [_logits(layers, picked)], axis=-1)
    chosen = g.op("GatherElements", [logp, g.op("Reshape", [targets, g.ints("/col", [-1, 1])])], axis=1)
    g.op("Reshape", [chosen, g.op("Shape", [targets])], ["target_logprobs"])
    g.output("target_logprobs", TensorProto.FLOAT, ["batch", "targets"])
    return g.model()


def score_graph(A, tensors, rotary, precision) -> onnx.ModelProto:
    """The reward head on the final hidden state of each row's last real token (`seqlens_k[b]`), float32."""
    g = Graph("score", precision)
    ids, seqlens, total = _common_inputs(g)
    _add_weights(g, tensors)
    layers = Layers(g, A, [n for n, _ in tensors], rotary)
    hidden = layers.body(ids, seqlens, total)
    last = g.op("Cast", [seqlens], to=TensorProto.INT64)
    picked = g.op("Gather", [hidden, _row_positions(g, last, _seq_len(g, ids))], axis=0)
    head = "score.weight"
    if precision != "float32":
        picked = g.op("Cast", [picked], to=TensorProto.FLOAT)
        head = g.op("Cast", [head], to=TensorProto.FLOAT)
    g.op("Reshape", [g.op("Gemm", [picked, head], transB=1), g.ints("/scores", [-1])], ["score"])
    g.output("score", TensorProto.FLOAT, ["batch"])
    return g.model()


def sample_graph(order: str = "sorted") -> onnx.ModelProto:
    """The next token of every row, drawn on the device from float32 logits, so that only ids and log-probs come
    back to the host. Inputs: `logits [rows, vocab]`, `inv_temperature [rows]` (1 / T, T > 0), `top_k []` (int64,
    the vocabulary size for none), `top_p []` (1 for none), `uniform [rows]` (one draw in [0, 1) per row, from
    that row's own RNG stream). Outputs: `token [rows]` (int64) and `logprob [rows]`: the drawn token and its
    log-probability under the distribution it was drawn from (temperature, top-k, top-p applied), and
    `greedy [rows]`: the first largest logit (what temperature 0 takes).

    order "sorted": the candidates are the top-k logits, largest first; top-p keeps a candidate while the
    probability mass before it is below top_p. order "index" (temperature only: no top-k, top-p 1): every token,
    in vocabulary order, nothing sorted. The draw is the first kept candidate whose cumulative weight exceeds
    uniform times the kept total (inverse CDF) -- the host sampler's rule (src/model/sampling.rs), in float32."""
    g = Graph(f"sample_{order}", "float32")
    logits = g.input("logits", TensorProto.FLOAT, ["rows", "vocab"])
    inv_t = g.input("inv_temperature", TensorProto.FLOAT, ["rows"])
    top_k = g.input("top_k", TensorProto.INT64, [])
    top_p = g.input("top_p", TensorProto.FLOAT, [])
    uniform = g.input("uniform", TensorProto.FLOAT, ["rows"])
    g.op("ArgMax", [logits], ["greedy"], axis=-1, keepdims=0, select_last_index=0)
    column = g.ints("/column", [1])
    scaled = g.op("Mul", [logits, g.op("Unsqueeze", [inv_t, column])])
    if order == "sorted":
        values, indices = g.op("TopK", [scaled, g.op("Reshape", [top_k, column])], 2, axis=-1, largest=1, sorted=1)
    else:
        values, indices = scaled, None
    weights = g.op("Exp", [g.op("Sub", [values, g.op("ReduceMax", [values, column], keepdims=1)])])
    cumulative = g.op("CumSum", [weights, g.ints("/axis", 1)])
    before = g.op("Div", [g.op("Sub", [cumulative, weights]), g.op("ReduceSum", [weights, column], keepdims=1)])
    kept = g.op("Where", [g.op("Less", [before, top_p]), weights, g.const("/zero_f", np.array(0.0, np.float32))])
    kept_cumulative = g.op("CumSum", [kept, g.ints("/axis2", 1)])
    kept_total = g.op("Gather", [kept_cumulative, g.ints("/last", [-1])], axis=1)
    threshold = g.op("Mul", [g.op("Unsqueeze", [uniform, column]), kept_total])
    past = g.op("Cast", [g.op("Greater", [kept_cumulative, threshold])], to=TensorProto.INT32)
    choice = g.op("ArgMax", [past], axis=-1, keepdims=1, select_last_index=0)
    token = choice if indices is None else g.op("GatherElements", [indices, choice], axis=1)
    g.op("Reshape", [token, g.ints("/rows", [-1])], ["token"])
    chosen = g.op("GatherElements", [kept, choice], axis=1)
    g.op("Reshape", [g.op("Log", [g.op("Div", [chosen, kept_total])]), g.ints("/rows2", [-1])], ["logprob"])
    g.output("token", TensorProto.INT64, ["rows"])
    g.output("logprob", TensorProto.FLOAT, ["rows"])
    g.output("greedy", TensorProto.INT64, ["rows"])
    return g.model()


BUILDERS = {"decode": decode_graph, "logprob": logprob_graph, "score": score_graph}
