"""Committed demo bundles: checksums, manifest consistency and parity fixtures replayed in ONNX Runtime.

Run from the repo root with the export venv:  /opt/export-venv/bin/python -m pytest tools/export/tests
"""
import hashlib
import json
import os
import tomllib

import numpy as np
import pytest

from .conftest import ROOT

MODELS = os.path.join(ROOT, "data", "models")
BUNDLES = [b for b in ["policy", "reward"] if os.path.exists(os.path.join(MODELS, b, "croco-model.toml"))]


def sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def manifest(b):
    return tomllib.load(open(os.path.join(MODELS, b, "croco-model.toml"), "rb"))


@pytest.mark.parametrize("b", BUNDLES)
def test_manifest_checksums(b):
    man = manifest(b)
    assert man["format"] == "croco-model" and man["format_version"] == 2 and man["kind"] == b
    on_disk = set()
    for root, _, fs in os.walk(os.path.join(MODELS, b)):
        for f in fs:
            on_disk.add(os.path.relpath(os.path.join(root, f), os.path.join(MODELS, b)))
    assert on_disk - {"croco-model.toml"} == set(man["files"])
    for rel, meta in man["files"].items():
        p = os.path.join(MODELS, b, rel)
        assert os.path.getsize(p) == meta["bytes"], rel
        assert sha(p) == meta["sha256"], rel


def test_checksums_file():
    lines = open(os.path.join(MODELS, "checksums")).read().split("\n")
    entries = [l.split("  ", 1) for l in lines if l]
    assert {p.split("/")[0] for _, p in entries} == set(BUNDLES)
    for h, p in entries:
        assert sha(os.path.join(MODELS, p)) == h, p
    for b in BUNDLES:  # the manifest's digests agree with the checksums file
        for rel, meta in manifest(b)["files"].items():
            assert [b + "/" + rel, meta["sha256"]] in [[p, h] for h, p in entries]


def test_size_limit():
    total = sum(os.path.getsize(os.path.join(r, f)) for b in BUNDLES for r, _, fs in os.walk(os.path.join(MODELS, b))
                for f in fs)
    assert total <= 30 * 1000 * 1000


@pytest.mark.parametrize("b", BUNDLES)
def test_weights_and_graph_io_match_manifest(b):
    onnx = pytest.importorskip("onnx")
    from safetensors.numpy import load_file

    man = manifest(b)
    W = load_file(os.path.join(MODELS, b, man["weights"]["file"]))
    order = [t["name"] for t in man["weights"]["tensors"]]  # graph input order; the file's order is irrelevant
    assert sorted(order) == sorted(W)
    for t in man["weights"]["tensors"]:
        assert list(W[t["name"]].shape) == t["shape"] and str(W[t["name"]].dtype) == t["dtype"]
    from tools.export.train_graphs import TRAINING_GRAPHS

    train = set(TRAINING_GRAPHS)
    assert set(man["graphs"]) == ({"decode", "logprob"} | train if b == "policy" else {"score"})
    for g in man["graphs"].values():
        assert "float32" in g["files"]
        m = onnx.load(os.path.join(MODELS, b, g["files"]["float32"]), load_external_data=False)
        names = [i.name for i in m.graph.input]
        weights = order if g["weight_inputs"] == "all" else g["weight_inputs"]  # training graphs: inputs name them
        assert names == [i["name"] for i in g["inputs"]] + weights
        assert [o.name for o in m.graph.output] == [o["name"] for o in g["outputs"]]
        for vi, spec in zip(list(m.graph.input) + list(m.graph.output), g["inputs"] + [None] * len(weights) + g["outputs"]):
            if spec is None:
                continue
            dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            assert dims == spec["shape"], (vi.name, dims, spec["shape"])
    tok = json.load(open(os.path.join(MODELS, b, "tokenizer.json")))
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    for t, i in man["tokenizer"]["special_tokens"].items():
        assert added[t] == i


@pytest.mark.parametrize("b", BUNDLES)
def test_tokenizer_fixture(b):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(os.path.join(MODELS, b, "tokenizer.json"))
    fx = json.load(open(os.path.join(MODELS, b, "parity", "tokenizer.json")))
    for c in fx["cases"]:
        assert tok.encode(c["text"], add_special_tokens=fx["add_special_tokens"]).ids == c["ids"]


def _sess_and_weights(b, graph):
    pytest.importorskip("onnxruntime")
    from safetensors.numpy import load_file

    from tools.export.ortrun import ort_session

    man = manifest(b)
    return man, ort_session(os.path.join(MODELS, b, man["graphs"][graph]["files"]["float32"])), \
        load_file(os.path.join(MODELS, b, man["weights"]["file"]))


@pytest.mark.skipif("policy" not in BUNDLES, reason="no policy bundle")
def test_policy_greedy_fixture_replays():
    from tools.export.ortrun import greedy, unpad

    man, sess, W = _sess_and_weights("policy", "decode")
    fx = json.load(open(os.path.join(MODELS, "policy", "parity", "greedy.json")))
    assert any(len(c["prompts"]) > 1 and 0 in sum(c["attention_mask"], []) for c in fx["cases"]), "no padded case"
    for c in fx["cases"]:
        seqs = unpad(c["input_ids"], c["attention_mask"])
        toks, logits = greedy(sess, W, man["architecture"], seqs, c["max_new_tokens"], c["stop_token_ids"],
                              c["pad_token_id"])
        assert toks == c["expected_tokens"], c["name"]
        np.testing.assert_allclose(logits[0][:, :16], c["expected_first_step_logits_head"], atol=fx["atol"], rtol=0)


@pytest.mark.skipif("policy" not in BUNDLES, reason="no policy bundle")
def test_policy_logprob_fixture():
    from tools.export.ortrun import logprobs, unpad

    man, sess, W = _sess_and_weights("policy", "logprob")
    fx = json.load(open(os.path.join(MODELS, "policy", "parity", "logprob.json")))
    seqs, starts = unpad(fx["input_ids"], fx["attention_mask"], fx["response_mask"])
    got = logprobs(sess, W, seqs, starts, man["tokenizer"]["pad_token_id"])
    for row, (g, rm) in enumerate(zip(got, fx["response_mask"])):
        expected = np.array(fx["expected_token_logprobs"][row])[np.array(rm) == 1]
        np.testing.assert_allclose(g, expected, atol=fx["atol"], rtol=0)
        np.testing.assert_allclose(g.sum(), fx["expected_logprob_sum"][row], atol=10 * fx["atol"], rtol=0)


@pytest.mark.skipif("reward" not in BUNDLES, reason="no reward bundle")
def test_reward_score_fixture():
    from tools.export.ortrun import scores, unpad

    man, sess, W = _sess_and_weights("reward", "score")
    fx = json.load(open(os.path.join(MODELS, "reward", "parity", "score.json")))
    sc = scores(sess, W, unpad(fx["input_ids"], fx["attention_mask"]), man["tokenizer"]["pad_token_id"])
    np.testing.assert_allclose(sc, fx["expected_scores"], atol=fx["atol"], rtol=0)
    np.testing.assert_allclose(sc, fx["expected_scores_unpadded"], atol=fx["atol"], rtol=0)
