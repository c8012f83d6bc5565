"""The layer-wise training graphs against torch autograd through the whole functional model: a weighted sum of
response-token log-probs, its gradient w.r.t. every LoRA tensor, with and without LoRA dropout."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tools.export import train_graphs as tg  # noqa: E402
from tools.export.export import llama_forward, positions_from_mask  # noqa: E402
from tools.export.ortrun import ort_session  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny(family, with_model=False):
    """A tiny random checkpoint of the family: (W, A, inv_freq, attention scaling[, the transformers model]).
    cohere2: a sliding window of 4 on layers 0 and 2 (rotary there only), a global layer 1, logit scale 0.5."""
    import transformers as tf

    from tools.export.checkpoint import arch_from_config

    torch.manual_seed(0)
    kw = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    cfg = {"llama": lambda: tf.LlamaConfig(**kw, head_dim=8), "qwen3": lambda: tf.Qwen3Config(**kw, head_dim=16),
           "cohere2": lambda: tf.Cohere2Config(**{**kw, "hidden_size": 64, "tie_word_embeddings": True},
                                               sliding_window=4, logit_scale=0.5,
                                               layer_types=["sliding_attention", "full_attention",
                                                            "sliding_attention"])}[family]()
    m = tf.AutoModelForCausalLM.from_config(cfg).eval()
    for n, p in m.named_parameters():
        if "norm" in n:
            torch.nn.init.normal_(p, mean=1.0, std=0.1)
    W = {n: t.detach().float().contiguous() for n, t in m.state_dict().items() if "rotary" not in n}
    A = arch_from_config(cfg) if family == "cohere2" else {
        "family": family, "vocab_size": 96, "hidden_size": 32, "num_layers": 3, "num_attention_heads": 4,
        "num_kv_heads": 2, "head_dim": cfg.head_dim, "intermediate_size": 48, "rms_norm_eps": cfg.rms_norm_eps}
    re = m.model.rotary_emb
    tiny = W, A, re.inv_freq.float(), float(getattr(re, "attention_scaling", 1.0))
    return (*tiny, m) if with_model else tiny


def test_functional_cohere2_equals_transformers():
    """The functional model the training graphs are held to, on cohere2 (parallel blocks, LayerNorm, neighbour-
    paired rotary on the sliding layers only, a window shorter than the sequence, logit scale), against
    transformers' own Cohere2ForCausalLM, left padding included."""
    W, A, inv_freq, scale_r, m = _tiny("cohere2", with_model=True)
    ids = torch.randint(3, 96, (2, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0
    pos = positions_from_mask(mask)
    mine, _ = llama_forward(W, A, inv_freq, scale_r, ids, mask, pos)
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    np.testing.assert_allclose(mine[real].detach().numpy(), ref[real].numpy(), atol=2e-5, rtol=0)


@pytest.mark.parametrize("family,p", [("llama", 0.0), ("llama", 0.1), ("qwen3", 0.1), ("cohere2", 0.0),
                                      ("cohere2", 0.1)])
def test_layerwise_gradients_equal_autograd_through_the_whole_model(tmp_path, family, p):
    W, A, inv_freq, scale_r = _tiny(family)
    tg.export_train_graphs(A, W, inv_freq, scale_r, TARGETS, str(tmp_path), log=lambda *_: None)
    sessions = {n: ort_session(str(tmp_path / f"{n}.onnx")) for n in tg.TRAINING_GRAPHS}
    g = torch.Generator().manual_seed(3)
    rows, S, T, R = 4, 11, 5, 3
    ids = torch.randint(3, 96, (rows, S), generator=g)
    mask = torch.ones(rows, S, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    positions = torch.stack([torch.arange(S - T - 1, S - 1)] * rows)
    targets = torch.gather(ids, 1, positions + 1)
    weights = torch.randn(rows, T, generator=g)
    lora = {}
    for layer in range(3):
        for m in TARGETS:
            o, i = W[f"model.layers.{layer}.{tg.module_path(m)}.weight"].shape
            lora[(layer, m)] = ((torch.randn(R, i, generator=g) * 0.1).requires_grad_(),
                                (torch.randn(o, R, generator=g) * 0.1).requires_grad_())
    lora_scale, seed = 2.0, 11
    modules = {f"model.layers.{l}.{tg.module_path(m)}.weight": (a, b, l * len(TARGETS) + TARGETS.index(m))
               for (l, m), (a, b) in lora.items()}
    logits, _ = llama_forward(W, A, inv_freq, scale_r, ids, mask, positions_from_mask(mask),
                              lora={"modules": modules, "scale": lora_scale, "p": torch.tensor(p),
                                    "seed": torch.tensor(seed, dtype=torch.int64)})
    logp = torch.gather(torch.log_softmax(logits, -1), 2, positions[..., None].expand(-1, -1, 96))
    token = torch.gather(torch.log_softmax(logits, -1).gather(1, positions[..., None].expand(-1, -1, 96)), 2,
                         targets[..., None])[..., 0]
    del logp
    (token * weights).sum().backward()
    np_lora = {k: (a.detach().numpy(), b.detach().numpy()) for k, (a, b) in lora.items()}
    Wn = {n: t.numpy() for n, t in W.items()}
    runs = {}
    for save in (False, True):  # the backward recomputes, then takes the forward's saved.* tensors
        got_logps, got = tg.layerwise_grads(sessions, Wn, A, TARGETS, ids.numpy(), mask.numpy(), np_lora, lora_scale,
                                            p, seed, positions.numpy(), targets.numpy(), weights.numpy(), save)
        np.testing.assert_allclose(got_logps, token.detach().numpy(), atol=1e-5, rtol=0)
        for k, (a, b) in lora.items():
            for mine, ref in zip(got[k], (a.grad, b.grad)):
                ref = ref.numpy()
                assert np.linalg.norm(mine - ref) <= 1e-4 * np.linalg.norm(ref) + 1e-9, (save, k, np.abs(mine - ref).max())
        runs[save] = got
    # the saved tensors are the ones the backward would recompute: the same gradients, bit for bit
    for k in lora:
        for recomputed, saved in zip(runs[False][k], runs[True][k]):
            np.testing.assert_array_equal(recomputed, saved)


@pytest.fixture(scope="module")
def bfloat16_graphs(tmp_path_factory):
    """The tiny families' bfloat16 training graphs, exported once: {family: (dir, W, A, inv_freq, scaling)}."""
    exported = {}
    for family in ("llama", "qwen3", "cohere2"):
        W, A, inv_freq, scale_r = _tiny(family)
        out = tmp_path_factory.mktemp(f"bf16-{family}")
        entries = tg.export_train_graphs(A, W, inv_freq, scale_r, TARGETS, str(out), log=lambda *_: None,
                                         precisions=("bfloat16",))
        assert entries["train_layer"]["files"] == {"bfloat16": "train_layer.bfloat16.onnx"}
        assert {s["name"]: s["dtype"] for s in entries["train_layer"]["inputs"]}["hidden"] == "compute"
        exported[family] = (str(out), W, A, inv_freq, scale_r)
    return exported


@pytest.mark.parametrize("family,p", [("llama", 0.1), ("qwen3", 0.1), ("cohere2", 0.0), ("cohere2", 0.1)])
def test_bfloat16_graphs_are_as_close_to_float32_autograd_as_torch_in_bfloat16(bfloat16_graphs, family, p):
    """The bfloat16 variants (run by ONNX's reference evaluator: ONNX Runtime's CPU has no bfloat16 kernels) err
    against float32 autograd about as much as torch autograd through the same model in bfloat16, which they
    mirror: products in bfloat16, norms, softmax and the LoRA adapters in float32."""
    out, W, A, inv_freq, scale_r = bfloat16_graphs[family]
    report = tg.check_half_parity(out, A, W, inv_freq, scale_r, TARGETS, "bfloat16", p=p)
    # not vacuous: bfloat16 errs measurably, and the graphs are not float32 in disguise
    assert report["torch_bfloat16_lora_grads"] > 1e-3 and report["train_bfloat16_lora_grads"] > 1e-4
    assert report["train_bfloat16_lora_grads"] < 0.05 and report["train_bfloat16_token_logps"] < 0.05


def test_bfloat16_parity_fails_on_a_wrong_softmax_scale(bfloat16_graphs, tmp_path):
    """A bfloat16 layer backward whose softmax scale is 25 % off (its queries' gradient, keys' and values'
    through the recomputed attention) fails the check."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from tools.export.export import ParityError
    from tools.export.graphs import bf16_tensor

    src, W, A, inv_freq, scale_r = bfloat16_graphs["llama"]
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "train_layer_backward.bfloat16.onnx"
    m = onnx.load(str(path))
    (init,) = [i for i in m.graph.initializer if i.name == "softmax_scale"]
    wrong = bf16_tensor(np.array(1.25 / np.sqrt(A["head_dim"])))
    init.CopyFrom(onnx.helper.make_tensor("softmax_scale", wrong.elem_type, [], wrong.bits.tobytes(), raw=True))
    onnx.save(m, str(path))
    assert numpy_helper.to_array(init).shape == ()
    with pytest.raises(ParityError, match="bfloat16 training graphs"):
        tg.check_half_parity(str(tmp_path), A, W, inv_freq, scale_r, TARGETS, "bfloat16")


def test_bfloat16_check_on_a_vocabulary_slice_traces_its_own_head(bfloat16_graphs, monkeypatch):
    """A vocabulary above HALF_CHECK_VOCAB is checked on its first rows, with head graphs traced at that size (the
    bundle's have the whole vocabulary built in): the same verdict."""
    out, W, A, inv_freq, scale_r = bfloat16_graphs["llama"]
    monkeypatch.setattr(tg, "HALF_CHECK_VOCAB", 64)
    report = tg.check_half_parity(out, A, W, inv_freq, scale_r, TARGETS, "bfloat16")
    assert report["train_bfloat16_lora_grads"] < 0.05 and report["torch_bfloat16_lora_grads"] > 1e-3
