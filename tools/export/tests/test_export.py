"""The exporter on tiny random checkpoints (Llama with tied embeddings, Qwen2 with attention biases):
parity must hold, and a broken graph must fail loudly."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

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


def _tiny(kind, family, path):
    from transformers import (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(0)
    kw = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=5)
    if family == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(**kw, tie_word_embeddings=False))
        for n, p in m.named_parameters():  # non-zero biases so that they matter
            if n.endswith("bias"):
                torch.nn.init.normal_(p, std=0.1)
    elif kind == "policy":
        m = LlamaForCausalLM(LlamaConfig(**kw, head_dim=8, tie_word_embeddings=True))
    else:
        m = LlamaForSequenceClassification(LlamaConfig(**kw, head_dim=8, num_labels=1))
    m.save_pretrained(path)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_policy_export_parity(tmp_path, tokenizer_path, family):
    _tiny("policy", family, tmp_path / "ckpt")
    out = tmp_path / "bundle"
    rep = policy.export_policy(str(tmp_path / "ckpt"), tokenizer_path, str(out), CHAT_TEMPLATE,
                           ["Hello there", "Wie geht es dir heute?", "Dia duit"], log=lambda *_: None, max_new=6)
    assert max(rep.values()) < ex.ATOL
    for f in ["croco-model.toml", "decode.onnx", "logprob.onnx", "dpo.onnx", "model.safetensors", "tokenizer.json",
              "parity/greedy.json", "parity/logprob.json", "parity/tokenizer.json", "parity/dpo.json",
              "parity/dpo.safetensors"]:
        assert (out / f).exists(), f
    import tomllib

    man = tomllib.load(open(out / "croco-model.toml", "rb"))
    for rel, meta in man["files"].items():
        assert ex.sha256_file(str(out / rel)) == meta["sha256"]
    assert man["tokenizer"]["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert list(man["graphs"]) == ["decode", "logprob", "dpo"]
    assert max(man["parity"]["measured_max_rel_l2"].values()) < ex.GRAD_RTOL
    assert any(k.endswith("_vs_peft_grads") for k in man["parity"]["measured_max_rel_l2"])
    if family == "qwen2":
        assert any(t["name"].endswith("q_proj.bias") for t in man["weights"]["tensors"])


def test_reward_export_parity(tmp_path, tokenizer_path):
    _tiny("reward", "llama", tmp_path / "ckpt")
    rep = ex.export_reward(str(tmp_path / "ckpt"), tokenizer_path, str(tmp_path / "b"), CHAT_TEMPLATE,
                           [("Hello", "Hi there"), ("Wie geht es?", "Gut"), ("x", "")], log=lambda *_: None)
    assert max(rep.values()) < ex.ATOL


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
