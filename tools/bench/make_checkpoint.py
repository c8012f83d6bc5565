"""Writes a randomly initialised Hugging Face Llama checkpoint of a named shape, sharded as the Hub ships them
(`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, at most --shard-gb per shard), for the export
and decode benchmarks: nothing is downloaded, and the weights never all sit in memory (one shard at a time).

    python tools/bench/make_checkpoint.py --shape eurollm-9b --dtype bfloat16 --out /var/tmp/eurollm-9b-shapes
    python tools/bench/make_checkpoint.py --shape llama-0.5b --out target/croco-bench/ckpt-llama-0.5b
    python tools/bench/make_checkpoint.py --shape llama-0.5b --reward --out /var/tmp/reward-0.5b-ckpt
    python tools/bench/make_checkpoint.py --shape eurollm-9b --layers 2 --dtype bfloat16 --out /var/tmp/eurollm-2l

Shapes: `eurollm-9b` is EuroLLM-9B's config (42 layers, hidden 4096, MLP 12288, 32/8 heads, vocab 128000,
untied head; ~18 GB in bfloat16); `llama-0.5b` a ~0.5 B Llama (24 layers, hidden 1024, MLP 4096, 16/8 heads,
vocab 32000). The tokenizer is the demo's (its ids lie inside any of these vocabularies)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

SHAPES = {
    "eurollm-9b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=42, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128000, max_position_embeddings=4096, rope_theta=10000.0),
    "llama-0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0),
}
DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "data", "models", "policy")


def tensor_shapes(c: dict, reward: bool = False) -> list[tuple[str, list[int]]]:
    """Every tensor of a LlamaForCausalLM with an untied head (reward: a LlamaForSequenceClassification with one
    label), in state-dict order."""
    h, i, heads, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
    d = h // heads
    out = [("model.embed_tokens.weight", [c["vocab_size"], h])]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [(p + "self_attn.q_proj.weight", [heads * d, h]), (p + "self_attn.k_proj.weight", [kv * d, h]),
                (p + "self_attn.v_proj.weight", [kv * d, h]), (p + "self_attn.o_proj.weight", [h, heads * d]),
                (p + "mlp.gate_proj.weight", [i, h]), (p + "mlp.up_proj.weight", [i, h]),
                (p + "mlp.down_proj.weight", [h, i]), (p + "input_layernorm.weight", [h]),
                (p + "post_attention_layernorm.weight", [h])]
    head = ("score.weight", [1, h]) if reward else ("lm_head.weight", [c["vocab_size"], h])
    return out + [("model.norm.weight", [h]), head]


def main():
    import torch
    from safetensors.torch import save_file

    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--shape", choices=sorted(SHAPES), required=True)
    a.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    a.add_argument("--out", required=True)
    a.add_argument("--shard-gb", type=float, default=4.0)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--reward", action="store_true", help="a *ForSequenceClassification (one label): a reward model")
    a.add_argument("--layers", type=int, help="decoder layers instead of the shape's (the widths stay), e.g. 2 for "
                   "the tune memory check at EuroLLM-9B's widths")
    args = a.parse_args()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    c = SHAPES[args.shape] | ({"num_hidden_layers": args.layers} if args.layers else {})
    if os.path.exists(os.path.join(args.out, "model.safetensors.index.json")):
        print(f"{args.out}: already written")
        return
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    t0 = time.time()
    shards, current, size = [], [], 0
    limit = args.shard_gb * 1e9
    for name, shape in tensor_shapes(c, args.reward):
        n = 1
        for s in shape:
            n *= s
        nbytes = n * (2 if dtype == torch.bfloat16 else 4)
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=dtype)
            else:
                tensors[name] = (torch.randn(shape, dtype=torch.float32) * 0.02).to(dtype)
            weight_map[name] = file
            total += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, os.path.join(args.out, file), metadata={"format": "pt"})
        del tensors
        print(f"{file} ({time.time() - t0:.0f} s)", flush=True)
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(args.out, "model.safetensors.index.json"), "w"), indent=1)
    architecture = "LlamaForSequenceClassification" if args.reward else "LlamaForCausalLM"
    config = {"architectures": [architecture], "model_type": "llama", "hidden_act": "silu", "num_labels": 1,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": args.dtype, "bos_token_id": 1,
              "eos_token_id": 5, "pad_token_id": 0, "attention_bias": False, "mlp_bias": False,
              "head_dim": c["hidden_size"] // c["num_attention_heads"], **c}
    json.dump(config, open(os.path.join(args.out, "config.json"), "w"), indent=1)
    json.dump({"bos_token_id": 1, "eos_token_id": [5, 2], "pad_token_id": 0},
              open(os.path.join(args.out, "generation_config.json"), "w"), indent=1)
    shutil.copyfile(os.path.join(DEMO, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))
    print(f"{args.out}: {total / 1e9:.1f} GB in {len(shards)} shards, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
