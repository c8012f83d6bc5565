"""Layer-wise training graphs of a policy bundle (docs/bundle-format.md, "Training graphs"): croco drives a LoRA
training step layer by layer, keeping only each layer's input (gradient checkpointing), so a step's memory is the
weights, L saved layer inputs and one layer's working set, whatever the depth:

- `train_embed`: the token embeddings of a batch;
- `train_layer`: one decoder layer with its LoRA adapters (the same graph for every layer: its weights and
  adapters are inputs under generic names, bound per layer, and `layer` picks the dropout masks);
- `train_layer_backward`: the same layer recomputed from its saved input, then its backward: the gradient
  w.r.t. the input and the layer's LoRA A/B (the frozen weights get none);
- `train_layer_save` and `train_layer_backward_saved`: the same pair where the forward also keeps the MLP's gate and
  up products and attention's queries, keys, values and output, so the backward recomputes only the attention
  probabilities, the norms and o_proj (more memory, less work: croco picks them where the step fits);
- `train_head`: final norm and LM head over chosen positions only (the positions predicting a response token, in
  chunks croco picks), per-token log-probs;
- `train_head_backward`: the gradient of Σ token_weights · token log-probs w.r.t. the hidden states: croco computes
  the loss and d loss / d log-prob (every TRL loss) itself.

The layer graphs work in sequence chunks and are assembled from pieces traced once (torch.func + make_fx) from the
functional model export.py runs (chunked.py), the head graphs are traced whole, so export time grows with neither
depth nor chunks; all are held to torch autograd through the whole model (check_parity)."""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from .chunked import (PREFIX, TORCH_DTYPES, LayerGraphs, Pieces, elem_type, example_sizes, module_path, trace,
                      train_file)
from .export import _export, _io_spec, norm
from .graphs import Graph

SEQUENCE_CHUNKS = 8  # the layer graphs' sequence chunks (chunked.py): a layer's working set is ~1/8 of a sequence's
TRAINING_GRAPHS = ["train_embed", "train_layer", "train_layer_backward", "train_layer_save", "train_layer_backward_saved",
                   "train_head", "train_head_backward"]
# half-precision graphs: their errors against float32 autograd within HALF_SLACK x torch's own in that precision,
# plus HALF_FLOOR (the two round differently: products accumulated in float32 either way, but in other orders)
HALF_SLACK = 2.0
HALF_FLOOR = 1e-3
# the half-precision check runs on the vocabulary's first rows only, with the head graphs traced again at that size
# (the same code; their vocabulary is static): a 128,000-row head in the reference evaluator took ~7 GB of copies
# beside the export's own
HALF_CHECK_VOCAB = 8192
HEAD_GRAPHS = ["train_embed", "train_head", "train_head_backward"]


def layer_suffixes(weight_names) -> list[str]:
    """The tensors of one decoder layer (layer 0's names less their prefix), in manifest order."""
    return [n[len("model.layers.0."):] for n in weight_names if n.startswith("model.layers.0.")]


def make_head(A):
    """h(hidden, target_positions, target_ids, norm, lm_head) -> token log-probs [rows, targets]."""

    def head(hidden, positions, targets, norm_weight, lm):
        picked = torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = (norm(A, picked, norm_weight) @ lm.T).float()
        if A.get("logit_scale", 1.0) != 1.0:  # cohere2
            logits = logits * A["logit_scale"]
        logp = torch.log_softmax(logits, dim=-1)
        return torch.gather(logp, 2, targets[..., None])[..., 0]

    return head


def make_head_backward(head):
    def backward(hidden, positions, targets, weights, norm, lm):
        _, vjp = torch.func.vjp(lambda h: head(h, positions, targets, norm, lm), hidden)
        return vjp(weights)[0]

    return backward


def export_train_graphs(A, W, inv_freq, rope_scale, targets, out, log, chunks=SEQUENCE_CHUNKS,
                        precisions=("float32",)):
    """Exports the five training graphs into `out` in each of `precisions` (float32, the CPU's, first; a half
    precision for CUDA), the layer graphs in `chunks` sequence chunks (chunked.py); returns their [graphs] entries
    (graph_entry format, one file per precision). With a half precision the hidden states, weights and their
    gradients are the manifest's dtype `compute`; LoRA tensors, their gradients and log-probs stay float32."""
    from .export import graph_entry

    t0 = time.time()
    entries = {}
    compute = "float32" if list(precisions) == ["float32"] else "compute"
    for precision in precisions:
        for name, spec in _export_variant(A, W, inv_freq, rope_scale, targets, out, log, chunks, precision,
                                          compute).items():
            files = entries.setdefault(name, spec).setdefault("files", {})
            files[precision] = spec["file"]
    log(f"training graphs exported in {time.time() - t0:.1f}s ({', '.join(precisions)})")
    return {name: graph_entry(spec, list(W)) for name, spec in entries.items()}


def _export_variant(A, W, inv_freq, rope_scale, targets, out, log, chunks, precision, compute):
    """The five training graphs in one precision; compute: the manifest dtype of the hidden states and weights."""
    suffixes = layer_suffixes(list(W))
    weight_specs = [_io_spec(PREFIX + s, compute, list(W["model.layers.0." + s].shape)) for s in suffixes]
    lora_specs = []
    for m in targets:
        o, i = W["model.layers.0." + module_path(m) + ".weight"].shape
        lora_specs += [_io_spec(f"lora.{m}.A", "float32", ["rank", i]), _io_spec(f"lora.{m}.B", "float32", [o, "rank"])]
    stream = ["rows", "seq", A["hidden_size"]]
    common_in = [_io_spec("hidden", compute, stream), _io_spec("attention_mask", "int64", ["rows", "seq"]),
                 _io_spec("lora_scale", "float32", []), _io_spec("dropout_p", "float32", []),
                 _io_spec("dropout_seed", "int64", []), _io_spec("layer", "int64", [])]
    pieces = Pieces(A, inv_freq, rope_scale, suffixes, targets, chunks, precision)
    W0 = {s: W["model.layers.0." + s] for s in suffixes}
    entries = LayerGraphs(pieces, W0, log).export(out, common_in + weight_specs + lora_specs, lora_specs, stream,
                                                  compute)
    return entries | _export_ends(A, W, out, log, precision, compute)


def _export_ends(A, W, out, log, precision, compute):
    """The embedding and head graphs of A and W in `precision` into `out`; returns their entries."""
    half_rows, S, T = example_sizes(W, A, 3)
    hidden = torch.randn(2 * half_rows, S, A["hidden_size"], generator=torch.Generator().manual_seed(0))
    entries = {}
    head_entries(A, W, out, log, hidden.to(TORCH_DTYPES[precision]), T, entries, precision, compute)
    embed_entry(A, W, out, entries, precision, compute)
    return entries


def head_entries(A, W, out, log, hidden, T, entries, precision="float32", compute="float32"):
    """`train_head` and `train_head_backward`, traced in `precision` (hidden's dtype): the final norm and the
    vocabulary projection in it, the logits, log-softmax, token log-probs and weights in float32."""
    from torch.export import Dim

    dtype = hidden.dtype
    head_weights = {"model.norm.weight": W["model.norm.weight"].to(dtype),
                    "lm_head.weight": W.get("lm_head.weight", W["model.embed_tokens.weight"]).to(dtype)}
    rows, S = hidden.shape[0], hidden.shape[1]
    g = torch.Generator().manual_seed(1)
    positions = torch.randint(0, S, (rows, T), generator=g)
    targets = torch.randint(0, A["vocab_size"], (rows, T), generator=g)
    weights = torch.randn(rows, T, generator=g)
    norm, lm = head_weights["model.norm.weight"].clone(), head_weights["lm_head.weight"].clone()
    dyn = Dim.DYNAMIC
    dims = {"hidden": ["rows", "seq", A["hidden_size"]], "target_positions": ["rows", "targets"],
            "target_ids": ["rows", "targets"], "token_logps": ["rows", "targets"], "token_weights": ["rows", "targets"],
            "grad_hidden": ["rows", "seq", A["hidden_size"]], "norm.weight": list(norm.shape),
            "lm_head.weight": list(lm.shape)}
    head = make_head(A)
    specs_in = [_io_spec("hidden", compute, dims["hidden"]), _io_spec("target_positions", "int64", dims["target_positions"]),
                _io_spec("target_ids", "int64", dims["target_ids"])]
    specs_w = [_io_spec("norm.weight", compute, dims["norm.weight"]), _io_spec("lm_head.weight", compute, dims["lm_head.weight"])]
    args = [hidden, positions, targets, norm, lm]
    names = [s["name"] for s in specs_in + specs_w]
    ds = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn}, None, None)
    head_file, backward_file = train_file("train_head", precision), train_file("train_head_backward", precision)
    _export(trace(head, args), tuple(args), os.path.join(out, head_file), names, ["token_logps"], ds, dims,
            log, strip_metadata=True)
    entries["train_head"] = {"file": head_file, "inputs": specs_in + specs_w,
                             "outputs": [_io_spec("token_logps", "float32", dims["token_logps"])], "weight_inputs": []}
    bargs = [hidden, positions, targets, weights, norm, lm]
    bspecs = specs_in + [_io_spec("token_weights", "float32", dims["token_weights"])] + specs_w
    bds = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn}, None, None)
    _export(trace(make_head_backward(head), bargs), tuple(bargs), os.path.join(out, backward_file),
            [s["name"] for s in bspecs], ["grad_hidden"], bds, dims, log, strip_metadata=True)
    entries["train_head_backward"] = {"file": backward_file, "inputs": bspecs,
                                      "outputs": [_io_spec("grad_hidden", compute, dims["grad_hidden"])],
                                      "weight_inputs": []}


def embed_entry(A, W, out, entries, precision="float32", compute="float32"):
    """`train_embed`: Gather of the embedding rows, built with onnx.helper."""
    import onnx
    from onnx import TensorProto

    g = Graph("train_embed", precision)
    ids = g.input("input_ids", TensorProto.INT64, ["rows", "seq"])
    table = g.input("embed_tokens.weight", elem_type(compute, precision), [A["vocab_size"], A["hidden_size"]])
    g.op("Gather", [table, ids], ["hidden"], axis=0)
    g.output("hidden", elem_type(compute, precision), ["rows", "seq", A["hidden_size"]])
    file = train_file("train_embed", precision)
    onnx.save(g.model(), os.path.join(out, file))
    entries["train_embed"] = {
        "file": file,
        "inputs": [_io_spec("input_ids", "int64", ["rows", "seq"]),
                   _io_spec("embed_tokens.weight", compute, [A["vocab_size"], A["hidden_size"]])],
        "outputs": [_io_spec("hidden", compute, ["rows", "seq", A["hidden_size"]])], "weight_inputs": []}


def layerwise_grads(sessions, W, A, targets, ids, mask, lora, scale, p, seed, positions, token_ids, token_weights,
                    save=False):
    """Runs the exported graphs as croco does (ONNX Runtime): embeddings, every layer forward keeping its input
    (and with save, its saved.* tensors: train_layer_save), the head, then every layer backward. Returns (token
    log-probs, grad wrt every LoRA tensor in lora_modules order). lora: {(layer, module): (A, B)} numpy arrays."""
    L = A["num_layers"]
    suffixes = layer_suffixes(list(W))
    f32 = lambda v: np.array(v, np.float32)  # noqa: E731
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    (x,) = sessions["train_embed"].run(None, {"input_ids": ids, "embed_tokens.weight": W["model.embed_tokens.weight"]})
    saved = []

    def layer_feeds(layer, hidden):
        feeds = {"hidden": hidden, "attention_mask": mask, "lora_scale": f32(scale), "dropout_p": f32(p),
                 "dropout_seed": i64(seed), "layer": i64(layer)}
        feeds.update({PREFIX + s: W[f"model.layers.{layer}.{s}"] for s in suffixes})
        for m in targets:
            a, b = lora[(layer, m)]
            feeds[f"lora.{m}.A"], feeds[f"lora.{m}.B"] = a, b
        return feeds

    for layer in range(L):
        if save:
            forward = sessions["train_layer_save"]
            x_in, (x, *kept) = x, forward.run(None, layer_feeds(layer, x))
            saved.append((x_in, dict(zip(_output_names(forward)[1:], kept))))
        else:
            saved.append((x, {}))
            (x,) = sessions["train_layer"].run(None, layer_feeds(layer, x))
    head_w = {"norm.weight": W["model.norm.weight"], "lm_head.weight": W.get("lm_head.weight", W["model.embed_tokens.weight"])}
    (logps,) = sessions["train_head"].run(None, {"hidden": x, "target_positions": positions, "target_ids": token_ids,
                                                 **head_w})
    (grad,) = sessions["train_head_backward"].run(None, {"hidden": x, "target_positions": positions,
                                                          "target_ids": token_ids, "token_weights": token_weights,
                                                          **head_w})
    grads = {}
    for layer in reversed(range(L)):
        x_in, kept = saved[layer]
        backward = sessions["train_layer_backward_saved" if save else "train_layer_backward"]
        outs = backward.run(None, {**layer_feeds(layer, x_in), **kept, "grad_hidden_out": grad})
        grad = outs[0]
        for i, m in enumerate(targets):
            grads[(layer, m)] = (outs[1 + 2 * i], outs[2 + 2 * i])
    return logps, grads


def _output_names(session):
    """A session's output names: an ONNX Runtime session's, or onnx's ReferenceEvaluator's (the half-precision
    check)."""
    if hasattr(session, "get_outputs"):
        return [o.name for o in session.get_outputs()]
    return list(session.output_names)


def add_train_graphs_to_bundle(bundle, log=print, check=True, chunks=None):
    """Exports the training graphs into an existing policy bundle with its DPO fixtures (dpo.dpo_fixtures), drops
    the whole-model `dpo` graph of older exports, and updates its manifest ([graphs], [parity], [files]) and the
    sibling `checksums` file when it lists the bundle; every other file stays byte-identical. check: hold the
    graphs to torch autograd through the whole model (check_parity) first; chunks: the layer graphs' sequence chunks
    (None: SEQUENCE_CHUNKS)."""
    from tokenizers import Tokenizer

    from .adapter import hf_model_from_bundle
    from .bundle import precisions_for
    from .dpo import dpo_fixtures, update_checksums
    from .export import GRAD_RTOL, file_table, rope_inv_freq, write_manifest

    man, W, hf = hf_model_from_bundle(bundle)
    A = man["architecture"]
    if man["kind"] != "policy":
        raise SystemExit(f"{bundle} is a {man['kind']} bundle: training graphs are for policies")
    rewritten = ("train_", "dpo.onnx", "parity/dpo.")
    before = {f: e["sha256"] for f, e in man["files"].items() if not f.startswith(rewritten)}
    inv_freq, rope_scale = rope_inv_freq(hf)
    targets = man["lora"]["target_modules"]
    man["graphs"].pop("dpo", None)
    if os.path.exists(os.path.join(bundle, "dpo.onnx")):
        os.remove(os.path.join(bundle, "dpo.onnx"))
    precisions = precisions_for(man["weights"]["dtype"])
    man["graphs"].update(export_train_graphs(A, W, inv_freq, rope_scale, targets, bundle, log,
                                             chunks=chunks or SEQUENCE_CHUNKS, precisions=precisions))
    measured = {k: v for k, v in man["parity"]["measured_max_abs_diff"].items() if not k.startswith("dpo_")}
    relative = {k: v for k, v in man["parity"].get("measured_max_rel_l2", {}).items() if not k.startswith("dpo_")}
    if check:
        report = check_parity(bundle, A, W, inv_freq, rope_scale, targets)
        for precision in precisions[1:]:
            report |= check_half_parity(bundle, A, W, inv_freq, rope_scale, targets, precision)
        relative |= report
        log(f"training graphs vs torch autograd: {report}")
    tok = Tokenizer.from_file(os.path.join(bundle, man["tokenizer"]["file"]))
    rep, rel = dpo_fixtures(bundle, A, W, inv_freq, rope_scale, targets, tok, man["chat"]["template"],
                            man["tokenizer"]["pad_token_id"], hf, log)
    man["parity"]["measured_max_abs_diff"] = measured | rep
    man["parity"]["grad_rtol"] = GRAD_RTOL
    man["parity"]["measured_max_rel_l2"] = relative | rel
    man["files"] = file_table(bundle)
    changed = [f for f, h in before.items() if man["files"].get(f, {}).get("sha256") != h]
    if changed:
        raise SystemExit(f"files that must not change did: {changed}")
    write_manifest(bundle, man)
    update_checksums(bundle, log)


def _autograd_reference(A, W, inv_freq, rope_scale, targets, p, seed, dtype=torch.float32):
    """The parity batch (left padding, response positions, token weights, LoRA tensors in float32) and torch
    autograd through the whole functional model with its weights in `dtype`: (batch, token log-probs,
    {(layer, module): (grad A, grad B)}), all float32 numpy."""
    from .export import llama_forward, positions_from_mask

    g = torch.Generator().manual_seed(3)
    rows, S, T, R = 4, 24, 8, 2
    ids = torch.randint(3, A["vocab_size"], (rows, S), generator=g)
    mask = torch.ones(rows, S, dtype=torch.long)
    mask[1, :5] = 0
    positions = torch.stack([torch.arange(S - T - 1, S - 1)] * rows)
    token_ids = torch.gather(ids, 1, positions + 1)
    weights = torch.randn(rows, T, generator=g)
    lora = {}
    for layer in range(A["num_layers"]):
        for m in targets:
            o, i = W[f"model.layers.{layer}.{module_path(m)}.weight"].shape
            lora[(layer, m)] = ((torch.randn(R, i, generator=g) * 0.05).requires_grad_(),
                                (torch.randn(o, R, generator=g) * 0.05).requires_grad_())
    modules = {f"model.layers.{l}.{module_path(m)}.weight": (a, b, l * len(targets) + targets.index(m))
               for (l, m), (a, b) in lora.items()}
    logits, _ = llama_forward({n: t.to(dtype) for n, t in W.items()}, A, inv_freq, rope_scale, ids, mask,
                              positions_from_mask(mask),
                              lora={"modules": modules, "scale": 2.0, "p": torch.tensor(p),
                                    "seed": torch.tensor(seed, dtype=torch.int64)})
    lp = torch.log_softmax(logits.float(), -1).gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))
    token = torch.gather(lp, 2, token_ids[..., None])[..., 0]
    (token * weights).sum().backward()
    batch = {"ids": ids.numpy(), "mask": mask.numpy(), "positions": positions.numpy(),
             "token_ids": token_ids.numpy(), "weights": weights.numpy(),
             "lora": {k: (a.detach().numpy(), b.detach().numpy()) for k, (a, b) in lora.items()}}
    grads = {k: (a.grad.numpy(), b.grad.numpy()) for k, (a, b) in lora.items()}
    return batch, token.detach().numpy(), grads


def _graph_errors(sessions, W, A, targets, p, seed, batch, logps, grads):
    """The graphs chained as croco chains them on the reference's batch, with the forward's tensors recomputed and
    saved: (largest token log-prob difference, largest relative L2 error of a LoRA gradient) against the
    reference's."""
    diff, worst = 0.0, 0.0
    for save in (False, True):
        got_logps, got = layerwise_grads(sessions, W, A, targets, batch["ids"], batch["mask"], batch["lora"], 2.0,
                                         p, seed, batch["positions"], batch["token_ids"], batch["weights"], save)
        diff = max(diff, float(np.abs(np.asarray(got_logps, np.float32) - logps).max()))
        for k, ref in grads.items():
            for mine, r in zip(got[k], ref):
                mine = np.asarray(mine, np.float32)
                worst = max(worst, float(np.linalg.norm(mine - r) / max(np.linalg.norm(r), 1e-12)))
    return diff, worst


def check_parity(out, A, W, inv_freq, rope_scale, targets, p=0.1, seed=5):
    """The float32 graphs in `out`, chained as croco chains them, against torch autograd through the whole
    functional model: token log-probs within ATOL, every LoRA gradient within GRAD_RTOL relative L2 error.
    Returns the largest errors."""
    from .export import ATOL, GRAD_RTOL, ParityError
    from .ortrun import ort_session

    sessions = {n: ort_session(os.path.join(out, f"{n}.onnx")) for n in TRAINING_GRAPHS}
    batch, logps, grads = _autograd_reference(A, W, inv_freq, rope_scale, targets, p, seed)
    diff, worst = _graph_errors(sessions, {n: t.detach().numpy() for n, t in W.items()}, A, targets, p, seed,
                                batch, logps, grads)
    if not diff <= ATOL:
        raise ParityError(f"PARITY FAILED: training graphs' token log-probs differ by {diff:.3g}")
    if not worst <= GRAD_RTOL:
        raise ParityError(f"PARITY FAILED: training graphs' LoRA gradients: relative L2 error {worst:.3g}")
    return {"train_token_logps": diff, "train_lora_grads": worst}


def _reference_ops():
    """Kernels for ONNX's reference evaluator: MatMul of half-precision operands as a GPU computes it (float32
    products and sums, the result rounded once; ml_dtypes' own loop is slower by orders of magnitude), and
    GatherElements by take_along_axis (the evaluator's goes through np.choose, which takes at most 64 choices: a
    vocabulary axis is more)."""
    from onnx.reference.op_run import OpRun

    class MatMul(OpRun):
        def _run(self, a, b):
            if a.dtype == np.float32 or a.dtype.kind in "iu":
                return (np.matmul(a, b),)
            # in column blocks: a float32 copy of a block of b at a time
            step = max(1, (1 << 22) // max(1, b.shape[-2]))
            blocks = [np.matmul(a.astype(np.float32), b[..., j:j + step].astype(np.float32)).astype(a.dtype)
                      for j in range(0, b.shape[-1], step)]
            return (np.concatenate(blocks, axis=-1),)

    class GatherElements(OpRun):
        def _run(self, data, indices, axis=None):
            axis = axis or 0
            return (np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis),)

    return [MatMul, GatherElements]


def check_half_parity(out, A, W, inv_freq, rope_scale, targets, precision, p=0.1, seed=5):
    """The half-precision graphs in `out` (ONNX Runtime's CPU kernels are float32 only, so ONNX's reference
    evaluator runs them, its products as a GPU computes them: _reference_ops) against torch autograd in float32,
    their errors held to HALF_SLACK times those of torch autograd through the same model in that precision (the
    accuracy a PyTorch user of these weights gets) plus HALF_FLOOR, on the first HALF_CHECK_VOCAB rows of the
    vocabulary. Returns the errors of both."""
    import ml_dtypes
    from onnx.reference import ReferenceEvaluator

    from .export import ParityError

    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[precision]
    with tempfile.TemporaryDirectory() as heads:
        paths = {n: os.path.join(out, train_file(n, precision)) for n in TRAINING_GRAPHS}
        if A["vocab_size"] > HALF_CHECK_VOCAB:
            A = {**A, "vocab_size": HALF_CHECK_VOCAB}
            W = {n: t[:HALF_CHECK_VOCAB] if n in ("model.embed_tokens.weight", "lm_head.weight") else t
                 for n, t in W.items()}
            _export_ends(A, W, heads, lambda *_: None, precision, "compute")
            paths |= {n: os.path.join(heads, train_file(n, precision)) for n in HEAD_GRAPHS}
        sessions = {n: ReferenceEvaluator(path, new_ops=_reference_ops()) for n, path in paths.items()}
    batch, logps, grads = _autograd_reference(A, W, inv_freq, rope_scale, targets, p, seed)
    # one half-precision copy of the weights serves torch and, viewed as numpy, the graphs
    W = {n: t.detach().to(TORCH_DTYPES[precision]) for n, t in W.items()}
    _, torch_logps, torch_grads = _autograd_reference(A, W, inv_freq, rope_scale, targets, p, seed,
                                                      TORCH_DTYPES[precision])
    torch_diff = float(np.abs(torch_logps - logps).max())
    torch_worst = max(float(np.linalg.norm(m - r) / max(np.linalg.norm(r), 1e-12))
                      for k, ref in grads.items() for m, r in zip(torch_grads[k], ref))
    half = {n: t.view(torch.int16).numpy().view(np_dtype) for n, t in W.items()}
    diff, worst = _graph_errors(sessions, half, A, targets, p, seed, batch, logps, grads)
    report = {f"train_{precision}_token_logps": diff, f"train_{precision}_lora_grads": worst,
              f"torch_{precision}_token_logps": torch_diff, f"torch_{precision}_lora_grads": torch_worst}
    if not (diff <= HALF_SLACK * torch_diff + HALF_FLOOR and worst <= HALF_SLACK * torch_worst + HALF_FLOOR):
        raise ParityError(f"PARITY FAILED: {precision} training graphs against float32 autograd, torch autograd "
                          f"in {precision} beside them: {report}")
    return report
