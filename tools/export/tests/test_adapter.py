"""PEFT adapter interop: an adapter written the way croco writes it (PEFT format, by hand) loads in peft, gives
the log-probs of the ONNX logprob graph fed merged weights (W + scale * B @ A) and of the layer-wise training
graphs fed the adapter, and `merge-adapter` turns it into a transformers checkpoint with the same log-probs."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from .conftest import ROOT  # noqa: E402

POLICY = os.path.join(ROOT, "data", "models", "policy")
TOL = 1e-4
R, ALPHA = 4, 8.0

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(POLICY, "croco-model.toml")), reason="no policy bundle")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A random adapter in PEFT format written without peft: (dir, {name: tensor})."""
    from safetensors.torch import save_file

    from tools.export.adapter import load_bundle
    from tools.export.dpo import lora_modules

    man, W = load_bundle(POLICY)
    g = torch.Generator().manual_seed(7)
    tensors = {}
    for w, an, bn in lora_modules(list(W), man["lora"]["target_modules"], man["architecture"]["num_layers"]):
        o, i = W[w].shape
        tensors[an] = torch.randn(R, i, generator=g) * 0.05
        tensors[bn] = torch.randn(o, R, generator=g) * 0.05
    d = tmp_path_factory.mktemp("adapter")
    save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    json.dump({"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.05,
               "target_modules": man["lora"]["target_modules"], "task_type": "CAUSAL_LM",
               "base_model_name_or_path": man["name"], "bias": "none"}, open(d / "adapter_config.json", "w"), indent=1)
    return str(d), tensors


def _fixture_inputs():
    fx = json.load(open(os.path.join(POLICY, "parity", "logprob.json")))
    return np.array(fx["input_ids"]), np.array(fx["attention_mask"]), np.array(fx["response_mask"])


def _hf_logprobs(model, ids, mask, rm):
    from tools.export.export import positions_from_mask

    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        lg = model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions_from_mask(mask_t)).logits
    tlp = torch.gather(lg[:, :-1].float().log_softmax(-1), 2, ids_t[:, 1:, None])[..., 0]
    tlp = torch.cat([torch.zeros_like(tlp[:, :1]), tlp], 1) * torch.from_numpy(rm).float()
    return tlp.numpy(), tlp.sum(-1).numpy()


@pytest.fixture(scope="module")
def peft_logprobs(adapter):
    from peft import PeftModel

    from tools.export.adapter import hf_model_from_bundle

    _, _, base = hf_model_from_bundle(POLICY)
    ids, mask, rm = _fixture_inputs()
    base_tok, _ = _hf_logprobs(base, ids, mask, rm)
    pm = PeftModel.from_pretrained(base, adapter[0]).eval()
    assert pm.peft_config["default"].r == R
    tok, s = _hf_logprobs(pm, ids, mask, rm)
    assert np.abs(tok - base_tok).max() > 1e-2  # the adapter matters
    return tok, s


def test_peft_equals_onnx_logprob_graph_with_merged_weights(adapter, peft_logprobs):
    from tools.export.adapter import load_bundle, merge_weights, read_adapter
    from tools.export.ortrun import logprobs, ort_session, unpad

    man, W = load_bundle(POLICY)
    _, tensors, scale = read_adapter(adapter[0])
    assert scale == ALPHA / R
    merged = merge_weights(W, tensors, scale)
    ids, mask, rm = _fixture_inputs()
    sess = ort_session(os.path.join(POLICY, man["graphs"]["logprob"]["files"]["float32"]))
    seqs, starts = unpad(ids, mask, rm)
    got = logprobs(sess, {n: t.numpy() for n, t in merged.items()}, seqs, starts, man["tokenizer"]["pad_token_id"])
    for row, g in enumerate(got):
        np.testing.assert_allclose(g, np.asarray(peft_logprobs[0][row])[rm[row] == 1], atol=TOL, rtol=0)
    np.testing.assert_allclose([g.sum() for g in got], peft_logprobs[1], atol=TOL, rtol=0)


def test_training_graphs_logps_equal_merged_weights(adapter, peft_logprobs):
    """What the layer-wise training graphs train (LoRA inputs, dropout 0) is what the merged weights generate with."""
    from tools.export import train_graphs as tg
    from tools.export.adapter import load_bundle
    from tools.export.ortrun import ort_session

    man, W = load_bundle(POLICY)
    sessions = {n: ort_session(os.path.join(POLICY, man["graphs"][n]["files"]["float32"])) for n in
                ["train_embed", "train_layer", "train_layer_backward", "train_head", "train_head_backward"]}
    ids, mask, rm = _fixture_inputs()
    # each row's response tokens as (predicting position, token), padded with weight 0 to the longest response
    targets = [np.flatnonzero(r) for r in rm]
    width = max(len(t) for t in targets)
    positions = np.zeros((len(ids), width), np.int64)
    valid = np.zeros((len(ids), width), np.float32)
    for i, t in enumerate(targets):
        positions[i, : len(t)], valid[i, : len(t)] = t - 1, 1.0
    token_ids = np.take_along_axis(ids, positions + 1, 1)
    targets_of = man["lora"]["target_modules"]
    lora = {}
    for layer in range(man["architecture"]["num_layers"]):
        for m in targets_of:
            base = f"base_model.model.model.layers.{layer}.{tg.module_path(m)}"
            lora[(layer, m)] = (adapter[1][base + ".lora_A.weight"].numpy(), adapter[1][base + ".lora_B.weight"].numpy())
    logps, _ = tg.layerwise_grads(sessions, {n: t.numpy() for n, t in W.items()}, man["architecture"], targets_of,
                                  ids, mask, lora, ALPHA / R, 0.0, 3, positions, token_ids, valid)
    np.testing.assert_allclose((logps * valid).sum(-1), peft_logprobs[1], atol=TOL, rtol=0)


def test_merge_adapter_checkpoint_in_transformers(adapter, peft_logprobs, tmp_path):
    from transformers import AutoModelForCausalLM

    from tools.export.cli import main

    out = tmp_path / "merged"
    main(["merge-adapter", POLICY, adapter[0], str(out)])
    for f in ["config.json", "model.safetensors", "tokenizer.json"]:
        assert (out / f).exists(), f
    model = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager", dtype=torch.float32).eval()
    tok, s = _hf_logprobs(model, *_fixture_inputs())
    np.testing.assert_allclose(tok, peft_logprobs[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(s, peft_logprobs[1], atol=TOL, rtol=0)
