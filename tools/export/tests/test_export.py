"""The exporter on tiny random checkpoints of every family (Llama with tied embeddings, Mistral with a sliding
window, Qwen2 with attention biases, Qwen3 with q/k norms, cohere2 with interleaved sliding and global layers):
parity must hold, and a broken graph must fail loudly."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from tools.export import bundle  # noqa: E402
from tools.export import export as ex  # noqa: E402
from tools.export import policy  # noqa: E402
from tools.export.train import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = ["Hello there, how are you today?", "Wie geht es dir heute?", "Dia duit, conas atá tú?",
             "Bonjour, comment ça va ?", "Sut mae? Da iawn diolch."] * 50
    tok = train_tokenizer(texts, vocab_size=300, log=lambda *_: None)
    p = str(d / "tokenizer.json")
    tok.save(p)
    return p


def _tiny(kind, family, path, layers=2, dtype=None):
    """A tiny random checkpoint of `family`: norms and biases non-trivial so that they matter, sliding windows
    shorter than the parity prompts."""
    import transformers as tf

    torch.manual_seed(0)
    kw = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=5)
    configs = {
        "llama": lambda: tf.LlamaConfig(**kw, head_dim=16, tie_word_embeddings=True),
        "mistral": lambda: tf.MistralConfig(**kw, head_dim=16, sliding_window=5, tie_word_embeddings=False),
        "qwen2": lambda: tf.Qwen2Config(**kw, tie_word_embeddings=False),
        "qwen3": lambda: tf.Qwen3Config(**kw, head_dim=32, tie_word_embeddings=False),
        "cohere2": lambda: tf.Cohere2Config(**kw, sliding_window=4, logit_scale=0.5, layer_types=[
            ("sliding_attention", "full_attention")[i % 2] for i in range(layers)]),
    }
    cfg = configs[family]()
    if kind == "policy":
        m = tf.AutoModelForCausalLM.from_config(cfg)
    else:
        cfg.num_labels = 1
        m = tf.AutoModelForSequenceClassification.from_config(cfg)
    for n, p in m.named_parameters():
        if n.endswith("bias") or "norm" in n:
            torch.nn.init.normal_(p, mean=1.0 if "norm" in n else 0.0, std=0.1)
    if dtype is not None:
        m = m.to(dtype)
    m.save_pretrained(path)


PROMPTS = ["Hello there", "Wie geht es dir heute?", "Dia duit, conas atá tú? Sut mae?"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "cohere2"])
def test_policy_export_parity_with_the_training_graphs(tmp_path, tokenizer_path, family):
    _tiny("policy", family, tmp_path / "ckpt")
    out = tmp_path / "bundle"
    rep = policy.export_policy(str(tmp_path / "ckpt"), tokenizer_path, str(out), CHAT_TEMPLATE, PROMPTS,
                               log=lambda *_: None, max_new=6, parity_layers=0)
    assert max(rep.values()) < ex.ATOL
    for f in ["croco-model.toml", "decode.float32.onnx", "logprob.float32.onnx", "train_layer.onnx",
              "train_layer_backward.onnx", "train_layer_save.onnx", "train_layer_backward_saved.onnx", "train_head.onnx", "train_head_backward.onnx", "model.safetensors",
              "tokenizer.json", "parity/greedy.json", "parity/logprob.json", "parity/tokenizer.json",
              "parity/dpo.json", "parity/dpo.safetensors"]:
        assert (out / f).exists(), f
    import tomllib

    man = tomllib.load(open(out / "croco-model.toml", "rb"))
    for rel, meta in man["files"].items():
        assert ex.sha256_file(str(out / rel)) == meta["sha256"]
    assert man["format_version"] == 2 and man["weights"]["dtype"] == "float32"
    assert man["tokenizer"]["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert sorted(man["graphs"]) == ["decode", "logprob", "train_embed", "train_head", "train_head_backward",
                                     "train_layer", "train_layer_backward", "train_layer_backward_saved",
                                     "train_layer_save"]
    assert not (out / "dpo.onnx").exists()
    assert max(man["parity"]["measured_max_rel_l2"].values()) < ex.GRAD_RTOL
    assert any(k.endswith("_vs_peft_grads") for k in man["parity"]["measured_max_rel_l2"])
    assert "train_lora_grads" in man["parity"]["measured_max_rel_l2"]
    if family == "qwen2":
        assert any(t["name"].endswith("q_proj.bias") for t in man["weights"]["tensors"])


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "cohere2"])
def test_every_family_matches_transformers_on_a_truncated_copy(tmp_path, tokenizer_path, family):
    """Four layers exported, parity on the first two read from the same checkpoint: greedy tokens identical,
    logits and log-probs within ATOL, in a padded batch too (sliding windows shorter than the prompts)."""
    _tiny("policy", family, tmp_path / "ckpt", layers=4)
    out = tmp_path / "bundle"
    rep = policy.export_policy(str(tmp_path / "ckpt"), tokenizer_path, str(out), CHAT_TEMPLATE, PROMPTS,
                               log=lambda *_: None, max_new=8, train=False)
    assert max(rep.values()) < ex.ATOL
    import tomllib

    man = tomllib.load(open(out / "croco-model.toml", "rb"))
    assert man["parity"]["layers"] == 2 and man["architecture"]["num_layers"] == 4
    assert man["architecture"]["family"] == family
    if family == "cohere2":
        assert man["architecture"]["rotary_layers"] == [True, False, True, False]
        assert man["architecture"]["attention_windows"] == [4, -1, 4, -1]


def test_training_graphs_of_a_truncated_parity_export_train_every_layer(tmp_path, tokenizer_path):
    """cohere2's training graphs pick each layer's rotary and sliding window from tables indexed by `layer`, so
    they are built from the whole model's architecture even when parity runs on a depth-truncated copy: held to
    the functional model through all four layers of the bundle."""
    import tomllib

    import transformers as tf
    from safetensors.numpy import load_file

    from tools.export.checkpoint import rotary_of
    from tools.export.export import LORA_TARGETS
    from tools.export.train_graphs import check_parity

    _tiny("policy", "cohere2", tmp_path / "ckpt", layers=4)
    out = tmp_path / "bundle"
    policy.export_policy(str(tmp_path / "ckpt"), tokenizer_path, str(out), CHAT_TEMPLATE, PROMPTS,
                         log=lambda *_: None, max_new=6, parity_layers=2)
    A = tomllib.load(open(out / "croco-model.toml", "rb"))["architecture"]
    assert A["num_layers"] == 4 and A["attention_windows"] == [4, -1, 4, -1]
    W = {n: torch.from_numpy(t) for n, t in load_file(str(out / "model.safetensors")).items()}
    rotary = rotary_of(tf.AutoConfig.from_pretrained(str(tmp_path / "ckpt")))
    rel = check_parity(str(out), A, W, torch.from_numpy(rotary["inv_freq"]).float(), rotary["attention_scaling"],
                       LORA_TARGETS)
    assert max(rel.values()) < ex.GRAD_RTOL


def test_a_bfloat16_checkpoint_keeps_its_weights_and_gets_bfloat16_graphs(tmp_path, tokenizer_path):
    _tiny("policy", "llama", tmp_path / "ckpt", dtype=torch.bfloat16)
    out = tmp_path / "bundle"
    policy.export_policy(str(tmp_path / "ckpt"), tokenizer_path, str(out), CHAT_TEMPLATE, PROMPTS,
                         log=lambda *_: None, max_new=6)
    import onnx
    import tomllib

    man = tomllib.load(open(out / "croco-model.toml", "rb"))
    assert man["weights"]["dtype"] == "bfloat16"
    assert man["graphs"]["decode"]["files"] == {"float32": "decode.float32.onnx", "bfloat16": "decode.bfloat16.onnx"}
    assert os.path.getsize(out / "model.safetensors") < 0.6 * 4 * sum(
        int(np.prod(t["shape"])) for t in man["weights"]["tensors"])
    m = onnx.load(str(out / "decode.bfloat16.onnx"))
    kinds = {i.name: i.type.tensor_type.elem_type for i in m.graph.input}
    assert kinds["model.embed_tokens.weight"] == onnx.TensorProto.BFLOAT16
    assert kinds["past_key_values.0.key"] == onnx.TensorProto.BFLOAT16
    assert {o.name: o.type.tensor_type.elem_type for o in m.graph.output}["logits"] == onnx.TensorProto.FLOAT
    # the training graphs too, held to float32 autograd beside torch's own bfloat16 error
    assert man["graphs"]["train_layer_backward"]["files"] == {
        "float32": "train_layer_backward.onnx", "bfloat16": "train_layer_backward.bfloat16.onnx"}
    assert {s["name"]: s["dtype"] for s in man["graphs"]["train_head"]["inputs"]} == {
        "hidden": "compute", "target_positions": "int64", "target_ids": "int64", "norm.weight": "compute",
        "lm_head.weight": "compute"}
    rel = man["parity"]["measured_max_rel_l2"]
    assert rel["train_bfloat16_lora_grads"] <= 2 * rel["torch_bfloat16_lora_grads"] + 1e-3
    m = onnx.load(str(out / "train_layer.bfloat16.onnx"))
    kinds = {i.name: i.type.tensor_type.elem_type for i in m.graph.input}
    assert kinds["hidden"] == kinds["layer.mlp.up_proj.weight"] == onnx.TensorProto.BFLOAT16
    assert kinds["lora.up_proj.A"] == onnx.TensorProto.FLOAT


def test_reward_export_parity(tmp_path, tokenizer_path):
    _tiny("reward", "qwen3", tmp_path / "ckpt")
    rep = bundle.export_reward(str(tmp_path / "ckpt"), tokenizer_path, str(tmp_path / "b"), CHAT_TEMPLATE,
                               [("Hello", "Hi there"), ("Wie geht es?", "Gut"), ("x", "")], log=lambda *_: None)
    assert max(rep.values()) < ex.ATOL


def test_graph_building_does_not_grow_with_depth():
    """42 layers of EuroLLM-9B's shapes: built from the config in well under a second, no weights needed."""
    import time

    from tools.export import graphs

    A = {"family": "llama", "vocab_size": 128000, "hidden_size": 4096, "num_layers": 42, "num_attention_heads": 32,
         "num_kv_heads": 8, "head_dim": 128, "intermediate_size": 12288, "rms_norm_eps": 1e-5,
         "rotary_layers": [True] * 42, "rotary_interleaved": False, "attention_windows": [-1] * 42,
         "logit_scale": 1.0, "max_position_embeddings": 4096}
    tensors = [("model.embed_tokens.weight", [128000, 4096]), ("model.norm.weight", [4096]),
               ("lm_head.weight", [128000, 4096])]
    rotary = {"inv_freq": 1.0 / 10000 ** (np.arange(0, 128, 2) / 128), "attention_scaling": 1.0}
    t0 = time.time()
    model = graphs.decode_graph(A, tensors, rotary, "bfloat16")
    assert time.time() - t0 < 5
    assert sum(n.op_type == "GroupQueryAttention" for n in model.graph.node) == 42


def test_parity_check_fails_loudly():
    with pytest.raises(ex.ParityError):
        ex._check("x", 1e-3, ex.ATOL, {})
    with pytest.raises(ex.ParityError):
        ex._check("nan", float("nan"), ex.ATOL, {})


def test_toml_writer_roundtrip():
    import tomllib

    d = {"a": 1, "b": "x\n\"y\"", "c": [1, 2], "t": {"f": 1.0, "g": True, "inl": {"k": 1, "__inline__": True}},
         "arr": [{"n": "p.q", "s": [1, "seq"]}, {"n": "r", "s": []}]}
    back = tomllib.loads(ex.to_toml(d))
    assert back["t"]["inl"] == {"k": 1} and back["arr"][0]["s"] == [1, "seq"] and back["b"] == d["b"]
