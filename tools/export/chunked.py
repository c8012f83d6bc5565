"""The training graphs' decoder layer in sequence chunks, so that one layer's working set is a fraction of the
sequence's whatever its length (docs/bundle-format.md, "Training graphs"):

- the sequence, padded at its end to `chunks * c` positions (c = ceil(seq / chunks)), is cut into `chunks` chunks
  (a number fixed at export; the chunk length follows the input);
- the position-wise parts of the layer (norms, projections with their LoRA adapters, rotary, the MLP) run chunk
  by chunk; the LoRA dropout hash is fed each position's index in the whole batch, so the masks are the ones
  the whole-sequence layer draws;
- causal attention runs query chunk by query chunk over its key prefix (chunks 0..i): keys after the chunk are
  never visible, so their blocks are skipped, and only one chunk's `[rows, heads, c, (i + 1) c]` scores exist at
  a time;
- the backward is written out, not traced through attention: chunk by chunk, the recomputed attention's
  probabilities serve both the chunk's output (which post's vjp needs) and its softmax backward
  dS = P * (dP - rowsum(dO * O)), so they are computed once per chunk and only one chunk's exist at a time;
  torch.func.vjp differentiates the position-wise parts per chunk, and the gradients of the keys, values and
  LoRA tensors are summed over chunks.

Only the position-wise pieces are traced (torch.func + make_fx, then torch.onnx), each once: `prepare` (padding,
rotary, the positions' indices), `pre` (norm, q/k/v projections, rotary) and `post` (o_proj, residual, norm,
MLP), and their vjps. They become ONNX functions of the graph (domain `croco.train`, inlined by ONNX Runtime).
The chunk loop and attention are written with onnx.helper: export time does not grow with the chunk count, and
attention's matmuls take their transposed operands as they are (ONNX Runtime folds the transposes into the
GEMM), where torch's traced batched matmuls expand and copy them. Padded positions are masked as keys and
dropped from the outputs."""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from .dropout import apply_dropout, feature_hashes, keep_mask, row_hashes
from .export import mlp_input, mlp_output, mlp_products, norm, positions_from_mask, project, qkv, rotary, rotate
from .graphs import PRECISIONS, bf16_tensor, add_initializer

PRE = ("q_proj", "k_proj", "v_proj")  # the adapted modules before attention; the others come after it
PRE_TENSORS = ("input_layernorm.", "self_attn.q_", "self_attn.k_", "self_attn.v_")  # their layer tensors
DOWN, DOWN_TENSOR = "down_proj", "mlp.down_proj.weight"  # the MLP's last projection: its own vjp where saved
# what train_layer_save keeps of each chunk for the backward (`saved.<name>.<chunk>`): the MLP's gate and up
# products, and attention's queries, keys, values and output
SAVED = ("mlp_gate", "mlp_up", "q", "k", "v", "attention")
DOMAIN = "croco.train"
PREFIX = "layer."  # generic names of a layer's weights in the layer graphs
SCALARS = ["lora_scale", "dropout_p", "dropout_seed", "layer"]  # the layer graphs' scalar inputs, in piece order
ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
MASKED = torch.finfo(torch.float32).min
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_file(name: str, precision: str) -> str:
    """The file of a training graph's variant: `train_layer.onnx` in float32 (the names of bundles from before the
    half-precision variants), `train_layer.bfloat16.onnx` in half precision."""
    return f"{name}.onnx" if precision == "float32" else f"{name}.{precision}.onnx"


def elem_type(dtype: str, precision: str) -> int:
    """The ONNX element type of a manifest dtype in a variant of `precision` (`compute`: the variant's own)."""
    return PRECISIONS[precision] if dtype == "compute" else ELEM[dtype]


def module_path(module: str) -> str:
    return ("self_attn." if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp.") + module


def saved_name(name, chunk):
    """A tensor train_layer_save outputs beside `hidden_out` and train_layer_backward_saved takes back: SAVED's
    `name` of sequence chunk `chunk`."""
    return f"saved.{name}.{chunk}"


def lora_names(targets, prefix=""):
    """The LoRA inputs of the targeted modules (or, with prefix "grad.", their gradients), A then B each."""
    return [f"{prefix}lora.{m}.{ab}" for m in targets for ab in "AB"]


class Pieces:
    """The traced pieces of one decoder layer (module docstring) for the architecture A, the layer tensors
    `suffixes` (layer 0's names less `model.layers.0.`) and the LoRA `targets`, computing in `precision`: the
    hidden states, weights, queries, keys and values in it; norms, softmax and the LoRA adapters (float32
    inputs, as peft keeps them) in float32."""

    def __init__(self, A, inv_freq, rope_scale, suffixes, targets, chunks, precision="float32"):
        self.A, self.inv_freq, self.rope_scale, self.targets, self.chunks = A, inv_freq, rope_scale, targets, chunks
        self.precision, self.dtype = precision, TORCH_DTYPES[precision]
        self.H, self.KV, self.D = A["num_attention_heads"], A["num_kv_heads"], A["head_dim"]
        self.rep, self.scale = self.H // self.KV, 1.0 / math.sqrt(A["head_dim"])
        self.pre_tensors = [s for s in suffixes if s.startswith(PRE_TENSORS)]
        # cohere2's parallel block: post's MLP takes the input's norm too
        self.post_tensors = [s for s in suffixes if not s.startswith(PRE_TENSORS)
                             or (A.get("parallel_block") and s.startswith("input_layernorm."))]
        rotary_layers = A.get("rotary_layers") or [True] * A["num_layers"]
        # cohere2's global layers do not rotate: cos and sin become 1 and 0 there (rotary_gate)
        self.rotary_flags = None if all(rotary_layers) else torch.tensor([float(r) for r in rotary_layers])
        self.pre_targets = [m for m in targets if m in PRE]
        self.post_targets = [m for m in targets if m not in PRE]
        # with the MLP products saved, the backward splits post's vjp at them: the MLP's output (down) and the rest
        self.rest_tensors = [s for s in self.post_tensors if s != DOWN_TENSOR]
        self.rest_targets = [m for m in self.post_targets if m != DOWN]
        self.down_targets = [m for m in self.post_targets if m == DOWN]

    def _weights_and_lora(self, rest, tensors, targets, scale, p, seed, layer, index):
        """(W, lora) of a piece from its flat weight and LoRA inputs; the dropout masks from index [B, c, 1]."""
        W = {s: w for s, w in zip(tensors, rest)}
        flat = rest[len(tensors):]
        modules = {module_path(m) + ".weight": (flat[2 * i], flat[2 * i + 1], layer * len(self.targets)
                                                + self.targets.index(m)) for i, m in enumerate(targets)}

        def dropout(t, j):
            hashes = feature_hashes(seed, j, t.shape[-1], t.device)
            return apply_dropout(t, keep_mask(row_hashes(seed, j, index), hashes, p), p)

        return W, {"modules": modules, "scale": scale, "p": p, "seed": seed, "dropout": dropout}

    def prepare(self, mask):
        """mask [B, S] -> (padded mask [B, P], cos and sin [B, 1, P, D], each position's index n = b * S + s
        in the batch [B, P, 1]); P = chunks * ceil(S / chunks)."""
        B, S = mask.shape
        P = self.chunks * ((S + self.chunks - 1) // self.chunks)
        # zeros concatenated, not Pad: ONNX Runtime's CUDA Pad has no int64 kernel
        padded = torch.cat([mask, mask.new_zeros(B, P - S)], dim=1)
        cos, sin = rotary(self.inv_freq, self.rope_scale, positions_from_mask(padded),
                          self.A.get("rotary_interleaved", False))
        index = torch.arange(B, device=mask.device)[:, None] * S + torch.arange(P, device=mask.device)[None, :]
        return padded, cos, sin, index[..., None]

    def pre(self, x, cos, sin, index, scale, p, seed, layer, *rest):
        """x [B, c, hidden] -> queries [B, KV, rep * c, D] (rows rep-major), keys and values [B, KV, c, D]."""
        W, lora = self._weights_and_lora(rest, self.pre_tensors, self.pre_targets, scale, p, seed, layer, index)
        A = self.A
        q, k, v = qkv(A, W, "", norm(A, x, W["input_layernorm.weight"]), lora)
        cos, sin = self.rotary_gate(cos, sin, layer)
        q, k = rotate(A, q, cos, sin), rotate(A, k, cos, sin)
        return q.reshape(x.shape[0], self.KV, self.rep * x.shape[1], self.D), k, v

    def rotary_gate(self, cos, sin, layer):
        """cos and sin on the layers that rotate, 1 and 0 (an exact identity) on those that do not."""
        if self.rotary_flags is None:
            return cos, sin
        on = self.rotary_flags.to(cos.device)[layer]
        return cos * on + (1.0 - on), sin * on

    def post(self, x, o, index, scale, p, seed, layer, *rest):
        """The residual stream x [B, c, hidden] and the attention output [B, KV, rep, c, D] -> (the layer's
        output [B, c, hidden], the MLP's gate and up products [B, c, intermediate]): sequential (the MLP on the
        stream after attention) or, for cohere2, parallel (the MLP on the input's norm, recomputed here)."""
        W, lora, stream, gate, up = self._post_parts(x, o, index, scale, p, seed, layer, self.post_tensors,
                                                     self.post_targets, rest)
        return stream + mlp_output(W, "", gate, up, lora), gate, up

    def _post_parts(self, x, o, index, scale, p, seed, layer, tensors, targets, rest):
        """post up to the MLP's products: (W, lora, the stream after attention, gate, up)."""
        W, lora = self._weights_and_lora(rest, tensors, targets, scale, p, seed, layer, index)
        o = o.permute(0, 3, 1, 2, 4).reshape(x.shape[0], x.shape[1], self.H * self.D)
        stream, h = mlp_input(self.A, W, "", x, project(W, "self_attn.o_proj.weight", o, lora))
        return (W, lora, stream, *mlp_products(W, "", h, lora))

    def pre_vjp(self, x, cos, sin, index, scale, p, seed, layer, *rest):
        """pre's inputs, then the gradients of its outputs (the queries' as [B, KV, rep, c, D]) -> (grad x, the
        LoRA gradients)."""
        (dq, dk, dv), rest = rest[-3:], rest[:-3]
        n = len(self.pre_tensors)
        dq = dq.reshape(x.shape[0], self.KV, self.rep * x.shape[1], self.D)

        def f(x_, *lora_):
            return self.pre(x_, cos, sin, index, scale, p, seed, layer, *rest[:n], *lora_)

        return torch.func.vjp(f, x, *rest[n:])[1]((dq, dk, dv))

    def post_vjp(self, x, o, index, scale, p, seed, layer, *rest):
        """post's inputs, then the gradient of its output -> (grad x, grad o [B, KV, rep, c, D], the LoRA
        gradients)."""
        grad, rest = rest[-1], rest[:-1]
        n = len(self.post_tensors)

        def f(x_, o_, *lora_):
            return self.post(x_, o_, index, scale, p, seed, layer, *rest[:n], *lora_)[0]

        return torch.func.vjp(f, x, o, *rest[n:])[1](grad)

    def mlp_vjp(self, gate, up, index, scale, p, seed, layer, *rest):
        """The MLP's saved products [B, c, intermediate], down's weight and LoRA, then the gradient of the layer's
        output -> (grad gate, grad up, down's LoRA gradients). The products are not recomputed: of down's
        forward only its LoRA input's product with A is (a linear layer's backward needs its input only)."""
        grad, rest = rest[-1], rest[:-1]

        def f(gate_, up_, *lora_):
            W, lora = self._weights_and_lora((*rest[:1], *lora_), [DOWN_TENSOR], self.down_targets, scale, p, seed,
                                             layer, index)
            return mlp_output(W, "", gate_, up_, lora)

        return torch.func.vjp(f, gate, up, *rest[1:])[1](grad)

    def post_saved_vjp(self, x, o, index, scale, p, seed, layer, *rest):
        """post's inputs less down's, then the gradients of the layer's output and of the MLP's products ->
        (grad x, grad o [B, KV, rep, c, D], the LoRA gradients of post's modules but down). The gate and up
        products are not recomputed (their outputs feed nothing the backward needs); o_proj's is, for the
        norm's backward."""
        (grad, grad_gate, grad_up), rest = rest[-3:], rest[:-3]
        n = len(self.rest_tensors)

        def f(x_, o_, *lora_):
            _, _, stream, gate, up = self._post_parts(x_, o_, index, scale, p, seed, layer, self.rest_tensors,
                                                      self.rest_targets, (*rest[:n], *lora_))
            return stream, gate, up

        return torch.func.vjp(f, x, o, *rest[n:])[1]((grad, grad_gate, grad_up))


def trace(fn, args):
    """fn traced by make_fx with symbolic sizes (backward ops without a torch.onnx translation decomposed)."""
    from torch._decomp import get_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    decompositions = get_decompositions([torch.ops.aten.silu_backward, torch.ops.aten._softmax_backward_data,
                                         torch.ops.aten._log_softmax_backward_data])
    with torch.no_grad():
        gm = make_fx(fn, decomposition_table=decompositions, tracing_mode="symbolic",
                     _allow_non_fake_inputs=True)(*args)
    kept = sum(1 for nd in gm.graph.nodes if nd.op == "placeholder")
    if kept != len(args):
        raise SystemExit(f"make_fx kept {kept} of {len(args)} inputs (equal input objects are merged)")
    gm.eval()
    return gm


def example_sizes(W, A, count):
    """`count` distinct odd example sizes that no weight dim, head count or head dim has, nor their products
    with the heads per KV head (make_fx's duck sizing unifies equal sizes)."""
    rep = A["num_attention_heads"] // A["num_kv_heads"]
    used = {d for t in W.values() for d in t.shape} | {A["num_attention_heads"], A["num_kv_heads"], A["head_dim"]}
    sizes = []
    for v in range(3, 4000, 2):
        if v not in used and v * rep not in used and all(v != w * rep and v * rep != w for w in sizes):
            sizes.append(v)
            used.add(v)
            if len(sizes) == count:
                return sizes
    raise SystemExit("no example sizes left")


def _function(path, name):
    """The exported piece at path as an ONNX function of DOMAIN (its constants as Constant nodes)."""
    m = onnx.load(path)
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in m.graph.initializer]
    return helper.make_function(DOMAIN, name, [i.name for i in m.graph.input], [o.name for o in m.graph.output],
                                consts + list(m.graph.node), opset_imports=list(m.opset_import))



class LayerGraphs:
    """Traces the pieces of one decoder layer once and writes `train_layer` and `train_layer_backward` with the
    chunk loop unrolled over them (module docstring). W0: layer 0's tensors by suffix (shapes and example
    values for the traces)."""

    def __init__(self, pieces: Pieces, W0, log):
        self.P, self.W0, self.log = pieces, W0, log

    def export(self, out, inputs, lora_specs, stream, stream_dtype="float32"):
        """Writes both graphs, in the pieces' precision, into `out`; returns their [graphs] entries (train_graphs'
        spec dicts). inputs: the forward graph's (data, weights, LoRA); lora_specs: the LoRA inputs' specs;
        stream: the shape of the hidden states; stream_dtype: their manifest dtype (`compute` where the bundle
        has several precisions)."""
        from .export import _io_spec

        with tempfile.TemporaryDirectory() as tmp:
            functions = self._functions(tmp)
        entries = {}
        Pc = self.P
        products, heads, kv = (["rows", "chunk", self.W0["mlp.gate_proj.weight"].shape[0]],
                               ["rows", Pc.KV, "heads_chunk", Pc.D], ["rows", Pc.KV, "chunk", Pc.D])
        shapes = {"mlp_gate": products, "mlp_up": products, "q": heads, "k": kv, "v": kv, "attention": heads}
        saved = [_io_spec(saved_name(name, i), stream_dtype, shapes[name])
                 for i in range(Pc.chunks) for name in SAVED]
        backward_in = inputs + [_io_spec("grad_hidden_out", stream_dtype, stream)]
        forward_out = [_io_spec("hidden_out", stream_dtype, stream)]
        backward_out = ([_io_spec("grad_hidden", stream_dtype, stream)]
                        + [_io_spec("grad." + s["name"], "float32", s["shape"]) for s in lora_specs])
        for name, ins, outs, body in (
                ("train_layer", inputs, forward_out, lambda g: self._forward(g, save=False)),
                ("train_layer_backward", backward_in, backward_out, lambda g: self._backward(g, saved=False)),
                ("train_layer_save", inputs, forward_out + saved, lambda g: self._forward(g, save=True)),
                ("train_layer_backward_saved", backward_in + saved, backward_out,
                 lambda g: self._backward(g, saved=True))):
            g = _Assembly(name, ins, self.P)
            body(g)
            for spec in outs:
                g.graph.output(spec["name"], elem_type(spec["dtype"], self.P.precision), spec["shape"])
            file = train_file(name, self.P.precision)
            path = os.path.join(out, file)
            onnx.save(g.model(functions), path)
            onnx.checker.check_model(path)
            self.log(f"assembled {file} ({os.path.getsize(path)} bytes, {len(g.graph.nodes)} nodes, "
                     f"{self.P.chunks} chunks)")
            entries[name] = {"file": file, "inputs": ins, "outputs": outs, "weight_inputs": [],
                             "sequence_chunks": self.P.chunks}
        return entries

    def _functions(self, tmp):
        from torch.export import Dim

        from .export import _export

        Pc, W0 = self.P, self.W0
        A, KV, D, rep = Pc.A, Pc.KV, Pc.D, Pc.rep
        R, half_rows, c = example_sizes(W0, A, 3)
        rows, hidden = 2 * half_rows, A["hidden_size"]
        g = torch.Generator().manual_seed(0)
        dyn, rank = Dim.DYNAMIC, Dim("rank", min=1)
        scalars = [torch.tensor(2.0), torch.tensor(0.1), torch.tensor(7, dtype=torch.int64),
                   torch.tensor(1, dtype=torch.int64)]
        scalar_names = ["scale", "p", "seed", "layer"]

        def lora(targets):
            tensors = []
            for m in targets:
                o, i = W0[module_path(m) + ".weight"].shape
                tensors += [torch.randn(R, i, generator=g) * 0.01, torch.randn(o, R, generator=g) * 0.01]
            return tensors, lora_names(targets), [{0: rank}, {1: rank}] * len(targets)

        def rand(*shape, dtype=Pc.dtype):
            return torch.randn(*shape, generator=g).to(dtype)

        index = torch.arange(rows * c, dtype=torch.int64).view(rows, c, 1)
        pre_lora, pre_lora_names, pre_lora_ds = lora(Pc.pre_targets)
        post_lora, post_lora_names, post_lora_ds = lora(Pc.post_targets)
        rest_lora, rest_lora_names, rest_lora_ds = lora(Pc.rest_targets)
        down_lora, down_lora_names, down_lora_ds = lora(Pc.down_targets)
        pre_w, post_w = [W0[s].to(Pc.dtype) for s in Pc.pre_tensors], [W0[s].to(Pc.dtype) for s in Pc.post_tensors]
        rest_w, down_w = [W0[s].to(Pc.dtype) for s in Pc.rest_tensors], [W0[DOWN_TENSOR].to(Pc.dtype)]
        intermediate = W0[DOWN_TENSOR].shape[1]
        row_chunk = {0: dyn, 1: dyn}
        f32 = torch.float32
        pre_in = ([rand(rows, c, hidden), rand(rows, 1, c, D, dtype=f32), rand(rows, 1, c, D, dtype=f32), index]
                  + scalars + pre_w
                  + pre_lora)
        pre_names = ["x", "cos", "sin", "index"] + scalar_names + Pc.pre_tensors + pre_lora_names
        pre_ds = ([row_chunk, {0: dyn, 2: dyn}, {0: dyn, 2: dyn}, row_chunk] + [None] * (4 + len(pre_w))
                  + pre_lora_ds)
        o5 = rand(rows, KV, rep, c, D)
        post_in = [rand(rows, c, hidden), o5, index] + scalars + post_w + post_lora
        post_names = ["x", "o", "index"] + scalar_names + Pc.post_tensors + post_lora_names
        post_ds = [row_chunk, {0: dyn, 3: dyn}, row_chunk] + [None] * (4 + len(post_w)) + post_lora_ds
        rest_in = [rand(rows, c, hidden), o5, index] + scalars + rest_w + rest_lora
        rest_names = ["x", "o", "index"] + scalar_names + Pc.rest_tensors + rest_lora_names
        rest_ds = [row_chunk, {0: dyn, 3: dyn}, row_chunk] + [None] * (4 + len(rest_w)) + rest_lora_ds
        products = [rand(rows, c, intermediate), rand(rows, c, intermediate)]
        down_in = products + [index] + scalars + down_w + down_lora
        down_names = ["gate", "up", "index"] + scalar_names + [DOWN_TENSOR] + down_lora_names
        down_ds = [row_chunk, row_chunk, row_chunk] + [None] * 5 + down_lora_ds
        mask = torch.ones(rows, Pc.chunks * c - 1, dtype=torch.int64)
        mask[0, :2] = 0
        specs = {
            "prepare": (Pc.prepare, [mask], ["mask"], [row_chunk], ["padded", "cos", "sin", "index"]),
            "pre": (Pc.pre, pre_in, pre_names, pre_ds, ["q", "k", "v"]),
            "pre_vjp": (Pc.pre_vjp, pre_in + [o5, rand(rows, KV, c, D), rand(rows, KV, c, D)],
                        pre_names + ["grad_q", "grad_k", "grad_v"],
                        pre_ds + [{0: dyn, 3: dyn}, {0: dyn, 2: dyn}, {0: dyn, 2: dyn}],
                        ["grad_x"] + lora_names(Pc.pre_targets, "grad.")),
            "post": (Pc.post, post_in, post_names, post_ds, ["y", "gate", "up"]),
            "post_vjp": (Pc.post_vjp, post_in + [rand(rows, c, hidden)], post_names + ["grad_y"],
                         post_ds + [row_chunk], ["grad_x", "grad_o"] + lora_names(Pc.post_targets, "grad.")),
            "mlp_vjp": (Pc.mlp_vjp, down_in + [rand(rows, c, hidden)], down_names + ["grad_y"],
                        down_ds + [row_chunk], ["grad_gate", "grad_up"] + lora_names(Pc.down_targets, "grad.")),
            "post_saved_vjp": (Pc.post_saved_vjp, rest_in + [rand(rows, c, hidden)] + products,
                               rest_names + ["grad_y", "grad_gate", "grad_up"], rest_ds + [row_chunk] * 3,
                               ["grad_x", "grad_o"] + lora_names(Pc.rest_targets, "grad.")),
        }
        functions = []
        for name, (fn, args, names, ds, outs) in specs.items():
            path = os.path.join(tmp, name + ".onnx")
            # the io names are the function's formal parameters; prefixed apart from the traced values' names
            _export(trace(lambda *a, fn=fn: fn(*a), args), tuple(args), path, [f"in.{n}" for n in names],
                    [f"out.{n}" for n in outs], tuple(ds), {}, self.log, strip_metadata=True)
            functions.append(_function(path, name))
        return functions

    def _prologue(self, g):
        """The padded chunks of the inputs: (x chunks, cos, sin, index, each query chunk's additive attention bias
        over its key prefix, S, the pads of a [rows, seq, hidden] input)."""
        n = self.P.chunks
        padded, cos, sin, index = g.call("prepare", ["attention_mask"], 4)
        S = g.op("Shape", ["hidden"], start=1, end=2)
        P = g.op("Shape", [padded], start=1, end=2)
        c = g.op("Squeeze", [g.op("Div", [P, g.ints("chunks", [n])])])
        pads = g.op("Concat", [g.ints("pad_begin", [0, 0, 0, 0]), g.op("Sub", [P, S]), g.ints("pad_end", [0])], axis=0)
        keep = g.split(padded, 1, n)
        biases = [g.bias(g.allowed(g.concat(keep[:i + 1], 1), g.op("Mul", [c, g.ints(f"chunk_{i}", i)]), c))
                  for i in range(n)]
        return (g.split(g.pad_sequence("hidden", pads), 1, n), g.split(cos, 2, n), g.split(sin, 2, n),
                g.split(index, 1, n), biases, S, pads)

    def _names(self, tensors, targets):
        """The layer graph's input names of a piece's weights and LoRA tensors."""
        return [PREFIX + s for s in tensors] + lora_names(targets)

    def _forward(self, g, save):
        """The layer forward; save: each chunk's MLP products and attention's tensors are outputs too
        (saved_name), each chunk's its own output, so that neither pass concatenates or splits them."""
        Pc = self.P
        xs, cos, sin, index, biases, S, _ = self._prologue(g)
        pre, post = self._names(Pc.pre_tensors, Pc.pre_targets), self._names(Pc.post_tensors, Pc.post_targets)
        keys, values, outs = [], [], []
        for i in range(Pc.chunks):
            def kept(*names, i=i):
                """The chunk's saved tensors named as outputs where they are made (an Identity would copy them);
                their count where the graph keeps nothing."""
                return [saved_name(name, i) for name in names] if save else len(names)

            q, k, v = g.call("pre", [xs[i], cos[i], sin[i], index[i], *SCALARS, *pre], kept("q", "k", "v"))
            keys.append(k)
            values.append(v)
            o, _, _ = g.attend(q, g.concat(keys, 2), g.concat(values, 2), biases[i], kept("attention"))
            y, _, _ = g.call("post", [xs[i], g.heads5(o), index[i], *SCALARS, *post],
                             [f"/post_{i}/y", *kept("mlp_gate", "mlp_up")] if save else 3)
            outs.append(y)
        g.op("Slice", [g.concat(outs, 1), g.ints("zero", [0]), S, g.ints("one", [1])], ["hidden_out"])

    def _backward(self, g, saved):
        """Recomputes the keys and values of every chunk, then per query chunk: its attention (probabilities
        kept for the chunk), post's vjp, attention's backward; then pre's vjp per chunk with the key and value
        gradients summed over the query chunks that saw them. saved: the forward's tensors are inputs
        (saved_name): queries, keys and values are not recomputed, nor attention's output (only its
        probabilities are), and post's vjp is split at the MLP's products (mlp_vjp, then post_saved_vjp), so
        its gate and up projections are not recomputed either."""
        Pc, n = self.P, self.P.chunks
        xs, cos, sin, index, biases, S, pads = self._prologue(g)
        grads = g.split(g.pad_sequence("grad_hidden_out", pads), 1, n)
        pre, post = self._names(Pc.pre_tensors, Pc.pre_targets), self._names(Pc.post_tensors, Pc.post_targets)
        rest, down = self._names(Pc.rest_tensors, Pc.rest_targets), self._names([DOWN_TENSOR], Pc.down_targets)
        if saved:
            gates, ups, qs, keys, values, outputs = ([saved_name(name, i) for i in range(n)] for name in SAVED)
        else:
            qs, keys, values = [], [], []
            for i in range(n):
                q, k, v = g.call("pre", [xs[i], cos[i], sin[i], index[i], *SCALARS, *pre], 3)
                qs.append(q)
                keys.append(k)
                values.append(v)
        lora_grads, grad_x, grad_q, grad_k, grad_v = {}, [], [], {}, {}
        post_lora, down_lora, rest_lora = (lora_names(t, "grad.") for t in (Pc.post_targets, Pc.down_targets,
                                                                             Pc.rest_targets))
        for i in range(n):
            # chunk i's key prefix, concatenated here and freed after the chunk (none kept between chunks)
            prefix_k, prefix_v = g.concat(keys[:i + 1], 2), g.concat(values[:i + 1], 2)
            if saved:
                prob, scaled_q = g.probabilities(qs[i], prefix_k, biases[i])
                o = outputs[i]
                gg, gu, *gl = g.call("mlp_vjp", [gates[i], ups[i], index[i], *SCALARS, *down, grads[i]],
                                     2 + len(down_lora))
                g.accumulate(lora_grads, down_lora, gl)
                gx, go, *gl = g.call("post_saved_vjp", [xs[i], g.heads5(o), index[i], *SCALARS, *rest, grads[i],
                                                        gg, gu], 2 + len(rest_lora))
                g.accumulate(lora_grads, rest_lora, gl)
            else:
                o, prob, scaled_q = g.attend(qs[i], prefix_k, prefix_v, biases[i])
                gx, go, *gl = g.call("post_vjp", [xs[i], g.heads5(o), index[i], *SCALARS, *post, grads[i]],
                                     2 + len(post_lora))
                g.accumulate(lora_grads, post_lora, gl)
            grad_x.append(gx)
            grad_o = g.op("Reshape", [go, g.ints("heads4", [0, 0, -1, Pc.D])])
            dq, dk, dv = g.attend_vjp(scaled_q, prefix_k, prefix_v, prob, o, grad_o)
            grad_q.append(g.heads5(dq))
            g.accumulate(grad_k, range(i + 1), g.split(dk, 2, i + 1))
            g.accumulate(grad_v, range(i + 1), g.split(dv, 2, i + 1))
        pre_lora = lora_names(Pc.pre_targets, "grad.")
        for i in range(n):
            gx, *gl = g.call("pre_vjp", [xs[i], cos[i], sin[i], index[i], *SCALARS, *pre, grad_q[i], grad_k[i],
                                         grad_v[i]], 1 + len(pre_lora))
            grad_x[i] = g.op("Add", [grad_x[i], gx])
            g.accumulate(lora_grads, pre_lora, gl)
        g.op("Slice", [g.concat(grad_x, 1), g.ints("zero", [0]), S, g.ints("one", [1])], ["grad_hidden"])
        for name in lora_names(Pc.targets, "grad."):
            g.op("Identity", [lora_grads[name]], [name])


class _Assembly:
    """A layer graph being written: a graphs.Graph plus calls of the pieces and the chunk helpers."""

    def __init__(self, name, inputs, pieces):
        from .graphs import Graph

        self.graph, self.pieces, self.consts = Graph(name, pieces.precision), pieces, set()
        self.half = pieces.precision != "float32"
        for spec in inputs:
            self.graph.input(spec["name"], elem_type(spec["dtype"], pieces.precision), spec["shape"])

    def op(self, op_type, inputs, outputs=1, **attrs):
        return self.graph.op(op_type, inputs, outputs, **attrs)

    def call(self, function, inputs, outputs):
        """A call of the piece `function`; outputs: their count, or their names."""
        names = self.graph.op(function, inputs, outputs, domain=DOMAIN)
        return names if isinstance(names, list) else [names]

    def ints(self, name, values):
        """An int64 constant, added once under its name."""
        if name not in self.consts:
            self.consts.add(name)
            self.graph.ints(name, values)
        return name

    def split(self, t, axis, parts):
        return [t] if parts == 1 else self.op("Split", [t], parts, axis=axis, num_outputs=parts)

    def concat(self, parts, axis):
        return parts[0] if len(parts) == 1 else self.op("Concat", list(parts), axis=axis)

    def heads5(self, t):
        """[B, KV, rep * c, D] -> [B, KV, rep, c, D]."""
        return self.op("Reshape", [t, self.ints("heads5", [0, 0, self.pieces.rep, -1, self.pieces.D])])

    def floats(self, name, value):
        """A float32 scalar constant, added once under its name."""
        if name not in self.consts:
            self.consts.add(name)
            self.graph.const(name, np.array(value, np.float32))
        return name

    def compute_scalar(self, name, value):
        """A scalar constant in the compute precision, added once under its name."""
        if not self.half:
            return self.floats(name, value)
        if name not in self.consts:
            self.consts.add(name)
            value = np.array(value, np.float64)
            add_initializer(self.graph, name, bf16_tensor(value) if self.pieces.precision == "bfloat16"
                         else value.astype(np.float16))
        return name

    def pad_sequence(self, t, pads):
        """t [rows, seq, hidden] padded with zeros at the end of the sequence (pads: Pad's, [0, 0, 0, 0, P - S,
        0]). In half precision by concatenating an expanded zero: ONNX Runtime's CUDA Pad has no bfloat16
        kernel."""
        if not self.half:
            return self.op("Pad", [t, pads])
        shape = self.op("Concat", [self.op("Shape", [t], start=0, end=1), self.op("Slice", [pads, self.ints(
            "pad_seq_start", [4]), self.ints("pad_seq_end", [5])]), self.op("Shape", [t], start=2, end=3)], axis=0)
        return self.op("Concat", [t, self.op("Expand", [self.compute_scalar("zero_compute", 0.0), shape])], axis=1)

    def to_float(self, t):
        """t in float32 (a no-op in the float32 graphs)."""
        return self.op("Cast", [t], to=TensorProto.FLOAT) if self.half else t

    def to_compute(self, t):
        """A float32 t in the compute precision (a no-op in the float32 graphs)."""
        return self.op("Cast", [t], to=self.graph.dtype) if self.half else t

    def allowed(self, keep, start, c):
        """Which keys each query of the chunk [start, start + c) sees, [B, 1, 1, c, K] (bool): key k iff
        k <= the query's position, keep[b, k] (keep [B, K]: 1 for a real token) and, on a layer with a sliding
        window w, the query's position - k < w (transformers' sliding mask; the window is picked by the graph's
        `layer` input)."""
        end = self.op("Add", [start, c])
        one = self.ints("one_scalar", 1)
        key_pos = self.op("Unsqueeze", [self.op("Range", [self.ints("zero_scalar", 0), end, one]),
                                        self.ints("axis_0", [0])])
        query_pos = self.op("Unsqueeze", [self.op("Range", [start, end, one]), self.ints("axis_1", [1])])
        causal = self.op("LessOrEqual", [key_pos, query_pos])
        windows = self.pieces.A.get("attention_windows") or []
        if any(w > 0 for w in windows):
            # global layers get a window no sequence reaches
            table = self.ints("attention_windows", [w if w > 0 else 2 ** 62 for w in windows])
            window = self.op("Gather", [table, "layer"], axis=0)
            near = self.op("Less", [self.op("Sub", [query_pos, key_pos]), window])
            causal = self.op("And", [causal, near])
        real = self.op("Greater", [keep, self.ints("zero_scalar", 0)])
        return self.op("And", [causal, self.op("Unsqueeze", [real, self.ints("axes_123", [1, 2, 3])])])

    def bias(self, allowed):
        """The additive float32 mask of `allowed`: 0 where a key is seen, MASKED where not, [B, 1, 1, c, K]. Added
        to the scores (score + MASKED rounds to MASKED wherever |score| < 2^103), it masks them as `Where` would,
        bit for bit, but ONNX Runtime's broadcasting `Add` is ~2.5x faster than its `Where` on the CPU, and the
        bias is built once per chunk, not per head."""
        return self.op("Where", [allowed, self.floats("unmasked", 0.0), self.floats("masked", MASKED)])

    def attend(self, q, keys, values, bias, output=1):
        """One query chunk's attention over its key prefix: q [B, KV, rep * c, D] (rows rep-major), keys and
        values [B, KV, K, D] -> (output [B, KV, rep * c, D] (`output`: as op's outputs, a count or [its name]),
        then probabilities' pair and scaled q)."""
        probs, scaled_q = self.probabilities(q, keys, bias)
        return self.op("MatMul", [probs[1], values], output), probs, scaled_q

    def probabilities(self, q, keys, bias):
        """attend's probabilities [B, KV, rep * c, K] in float32 and in the compute precision, and q times the
        softmax scale. The scale goes on q, not on the [.., K] scores: the same values wherever it is a power of
        two (head_dim 64 or 256), within rounding otherwise. In half precision the products run in it and the
        mask and softmax in float32 (transformers' eager attention)."""
        scaled_q = self.op("Mul", [q, self.compute_scalar("softmax_scale", self.pieces.scale)])
        scores = self.op("MatMul", [scaled_q, self.transposed(keys)])
        rep5 = self.op("Concat", [self.ints("rep5", [0, 0, self.pieces.rep, -1]),
                                  self.op("Shape", [keys], start=2, end=3)], axis=0)
        masked = self.op("Add", [self.op("Reshape", [self.to_float(scores), rep5]), bias])
        prob = self.op("Reshape", [self.op("Softmax", [masked], axis=-1), self.op("Shape", [scores])])
        return (prob, self.to_compute(prob)), scaled_q

    def attend_vjp(self, scaled_q, keys, values, probs, o, grad_o):
        """The gradients of attend's output w.r.t. q, keys and values from its probabilities (attend's pair) and
        output: dS = P * (dP - rowsum(dO * O)), the softmax's backward, in float32."""
        prob, prob_compute = probs
        dp = self.to_float(self.op("MatMul", [grad_o, self.transposed(values)]))
        rowsum = self.op("ReduceSum", [self.op("Mul", [self.to_float(grad_o), self.to_float(o)]),
                                       self.ints("last_axis", [-1])], keepdims=1)
        ds = self.to_compute(self.op("Mul", [prob, self.op("Sub", [dp, rowsum])]))
        grad_q = self.op("Mul", [self.op("MatMul", [ds, keys]),
                                 self.compute_scalar("softmax_scale", self.pieces.scale)])
        return (grad_q, self.op("MatMul", [self.transposed(ds), scaled_q]),
                self.op("MatMul", [self.transposed(prob_compute), grad_o]))

    def transposed(self, t):
        """The last two axes of a 4-D t swapped (folded into the consuming MatMul by ONNX Runtime)."""
        return self.op("Transpose", [t], perm=[0, 1, 3, 2])

    def accumulate(self, sums, keys, values):
        for key, value in zip(keys, values):
            sums[key] = value if key not in sums else self.op("Add", [sums[key], value])

    def model(self, functions):
        """The model with the pieces as its functions, at the traced pieces' opsets."""
        from .export import OPSET

        opsets = {"": OPSET, DOMAIN: 1}
        for f in functions:
            for o in f.opset_import:
                opsets.setdefault(o.domain, o.version)
        return self.graph.model(opsets, functions)
