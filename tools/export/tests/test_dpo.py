"""The training graphs' building blocks: the dropout hash is bit-identical in torch and ONNX Runtime, p = 0 is an
exact identity, the loss matches TRL's formulas, and a wide MLP's dropout bakes no constant into the graphs."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from tools.export import dpo, dropout  # noqa: E402


class _Mask(torch.nn.Module):
    def forward(self, x, p, seed):
        return dropout.dropout_keep(x, p, seed, 3), dropout.lora_dropout(x, p, seed, 5)


@pytest.fixture(scope="module")
def mask_session(tmp_path_factory):
    from torch.export import Dim

    path = str(tmp_path_factory.mktemp("hash") / "mask.onnx")
    d = Dim.DYNAMIC
    prog = torch.onnx.export(_Mask().eval(), (torch.randn(2, 3, 5), torch.tensor(0.1), torch.tensor(7)), dynamo=True,
                             opset_version=18, input_names=["x", "p", "seed"], output_names=["keep", "y"],
                             dynamic_shapes=({0: d, 1: d, 2: d}, None, None), verbose=False)
    prog.save(path)
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("shape,p,seed", [((4, 64, 256), 0.1, 42), ((6, 50, 512), 0.5, -7), ((2, 3, 5), 0.0, 2**62 + 5),
                                          ((8, 128, 384), 0.1, 123456789), ((3, 7, 11), 0.9, -(2**63))])
def test_dropout_mask_bit_identical(mask_session, shape, p, seed):
    x = torch.randn(*shape)
    keep, y = _Mask()(x, torch.tensor(p), torch.tensor(seed))
    o_keep, o_y = mask_session.run(None, {"x": x.numpy(), "p": np.array(p, np.float32), "seed": np.array(seed, np.int64)})
    assert np.array_equal(o_keep, keep.numpy())
    if p == 0:
        assert torch.equal(y, x) and np.array_equal(o_y, x.numpy())  # exact identity
    else:
        assert abs(float(keep.float().mean()) - (1 - p)) < 0.02
        np.testing.assert_allclose(o_y, y.numpy(), rtol=1e-6, atol=0)


def test_dropout_masks_independent():
    x = torch.zeros(1, 500, 1000)
    a = dropout.dropout_keep(x, torch.tensor(0.5), torch.tensor(1), 0).float().flatten().numpy()
    b = dropout.dropout_keep(x, torch.tensor(0.5), torch.tensor(1), 1).float().flatten().numpy()
    c = dropout.dropout_keep(x, torch.tensor(0.5), torch.tensor(2), 0).float().flatten().numpy()
    for u, v in [(a[:-1], a[1:]), (a, b), (a, c), (a[:-1000], a[1000:])]:
        assert abs(np.corrcoef(u, v)[0, 1]) < 0.01
    rows = a.reshape(500, 1000)[:300] - 0.5  # no pair of positions has strongly correlated masks
    corr = (rows @ rows.T) / (0.25 * 1000)
    np.fill_diagonal(corr, 0)
    assert np.abs(corr).max() < 6 / np.sqrt(1000)


def test_logsigmoid_and_loss_formulas():
    import torch.nn.functional as F

    x = torch.tensor([-80.0, -3.0, 0.0, 2.5, 90.0], requires_grad=True)
    y = dpo._logsigmoid(x)
    torch.testing.assert_close(y, F.logsigmoid(x.detach()), atol=1e-6, rtol=0)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.sigmoid(-x.detach()), atol=1e-6, rtol=0)  # 1/2 at 0


def test_training_graphs_of_a_wide_mlp_bake_no_constant(tmp_path):
    """intermediate_size > MAX_CONST_ELEMS (4096): the feature-index term of down_proj's dropout hash used to be
    constant-folded into an int64 [intermediate] initializer, which _export's baked-weights check rejects
    (random-llama --intermediate 4608). One tiny layer is the smallest config that showed it."""
    import onnx

    from tools.export import train_graphs as tg
    from tools.export.export import LORA_TARGETS, MAX_CONST_ELEMS

    hidden, heads, kv, inter, vocab = 16, 2, 1, MAX_CONST_ELEMS + 1, 64
    D = hidden // heads
    A = {"family": "llama", "vocab_size": vocab, "hidden_size": hidden, "num_layers": 1, "num_attention_heads": heads,
         "num_kv_heads": kv, "head_dim": D, "intermediate_size": inter, "rms_norm_eps": 1e-5}
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    p = "model.layers.0."
    W = {"model.embed_tokens.weight": r(vocab, hidden), p + "input_layernorm.weight": 1 + r(hidden),
         p + "self_attn.q_proj.weight": r(heads * D, hidden), p + "self_attn.k_proj.weight": r(kv * D, hidden),
         p + "self_attn.v_proj.weight": r(kv * D, hidden), p + "self_attn.o_proj.weight": r(hidden, heads * D),
         p + "post_attention_layernorm.weight": 1 + r(hidden), p + "mlp.gate_proj.weight": r(inter, hidden),
         p + "mlp.up_proj.weight": r(inter, hidden), p + "mlp.down_proj.weight": r(hidden, inter) * 0.1,
         "model.norm.weight": 1 + r(hidden), "lm_head.weight": r(vocab, hidden)}
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
    tg.export_train_graphs(A, W, inv_freq, 1.0, LORA_TARGETS, str(tmp_path), lambda *_: None)
    for name in ("train_layer", "train_layer_backward", "train_layer_save", "train_layer_backward_saved"):
        m = onnx.load(str(tmp_path / f"{name}.onnx"))
        # the graph's initializers and the constants inside its pieces (ONNX functions, chunked.py)
        consts = list(m.graph.initializer) + [a.t for f in m.functions for n in f.node if n.op_type == "Constant"
                                              for a in n.attribute if a.name == "value"]
        assert len(consts) > len(m.graph.initializer)
        big = [(t.name, list(t.dims)) for t in consts if np.prod(t.dims) > MAX_CONST_ELEMS]
        assert not big, (name, big)
    # same numerics as torch autograd through the model, dropout mask included
    report = tg.check_parity(str(tmp_path), A, W, inv_freq, 1.0, LORA_TARGETS, p=0.3)
    assert report["train_lora_grads"] < 1e-4, report
