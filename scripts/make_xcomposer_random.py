"""Writes a random-weight InternLM-XComposer-7B in the original checkpoint format, for benchmarks.

argv: OUT TOKENIZER_MODEL
Real shapes (8.8 B parameters), real key names, the real dtype mix (f16 LLM and ViT weights, f32
LoRA, Q-Former, flags, norms and biases of the ViT), 4 zip-pickle shards + index, config.json with
the 7B values (vit_*/qformer_* absent: the loader's defaults are the real ones), tokenizer.model.
Values: N(0, 0.02²), norms 1; generated on the GPU when there is one.
"""
import json
import os
import shutil
import sys

import torch

out, tok = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
dev = "cuda" if torch.cuda.is_available() else "cpu"
H, F, L, V, R = 4096, 11008, 32, 103168, 256
D, DEPTH, MLP, P = 1408, 39, 6144, 14
Q, QL, QF, NQ = 768, 12, 3072, 64
f16, f32 = torch.float16, torch.float32
keys = []


def add(name, shape, dtype, kind="w"):
    keys.append((name, shape, dtype, kind))


add("visual_encoder.cls_token", (1, 1, D), f32)
add("visual_encoder.pos_embed", (1, 257, D), f32)
add("visual_encoder.patch_embed.proj.weight", (D, 3, P, P), f16)
add("visual_encoder.patch_embed.proj.bias", (D,), f16)
for i in range(DEPTH):
    p = f"visual_encoder.blocks.{i}"
    for n in ("norm1", "norm2"):
        add(f"{p}.{n}.weight", (D,), f32, "one")
        add(f"{p}.{n}.bias", (D,), f32)
    add(f"{p}.attn.qkv.weight", (3 * D, D), f16)
    add(f"{p}.attn.q_bias", (D,), f32)
    add(f"{p}.attn.v_bias", (D,), f32)
    add(f"{p}.attn.proj.weight", (D, D), f16)
    add(f"{p}.attn.proj.bias", (D,), f16)
    add(f"{p}.mlp.fc1.weight", (MLP, D), f16)
    add(f"{p}.mlp.fc1.bias", (MLP,), f16)
    add(f"{p}.mlp.fc2.weight", (D, MLP), f16)
    add(f"{p}.mlp.fc2.bias", (D,), f16)
add("ln_vision.weight", (D,), f32, "one")
add("ln_vision.bias", (D,), f32)
add("query_tokens", (1, NQ, Q), f32)
add("Qformer.bert.embeddings.LayerNorm.weight", (Q,), f32, "one")
add("Qformer.bert.embeddings.LayerNorm.bias", (Q,), f32)
for i in range(QL):
    p = f"Qformer.bert.encoder.layer.{i}"
    blocks = [("attention", Q)] + ([("crossattention", D)] if i % 2 == 0 else [])
    for blk, kv in blocks:
        add(f"{p}.{blk}.self.query.weight", (Q, Q), f32)
        add(f"{p}.{blk}.self.query.bias", (Q,), f32)
        for n in ("key", "value"):
            add(f"{p}.{blk}.self.{n}.weight", (Q, kv), f32)
            add(f"{p}.{blk}.self.{n}.bias", (Q,), f32)
        add(f"{p}.{blk}.output.dense.weight", (Q, Q), f32)
        add(f"{p}.{blk}.output.dense.bias", (Q,), f32)
        add(f"{p}.{blk}.output.LayerNorm.weight", (Q,), f32, "one")
        add(f"{p}.{blk}.output.LayerNorm.bias", (Q,), f32)
    add(f"{p}.intermediate_query.dense.weight", (QF, Q), f32)
    add(f"{p}.intermediate_query.dense.bias", (QF,), f32)
    add(f"{p}.output_query.dense.weight", (Q, QF), f32)
    add(f"{p}.output_query.dense.bias", (Q,), f32)
    add(f"{p}.output_query.LayerNorm.weight", (Q,), f32, "one")
    add(f"{p}.output_query.LayerNorm.bias", (Q,), f32)
add("internlm_proj.weight", (H, Q), f32)
add("internlm_proj.bias", (H,), f32)
add("flag_image_start", (1, 1, H), f32)
add("flag_image_end", (1, 1, H), f32)
add("internlm_model.model.embed_tokens.weight", (V, H), f16)
for i in range(L):
    p = f"internlm_model.model.layers.{i}"
    for n in ("q", "k", "v", "o"):
        add(f"{p}.self_attn.{n}_proj.weight", (H, H), f16)
        add(f"{p}.self_attn.{n}_proj.bias", (H,), f16)
    for n in ("q", "v"):
        add(f"{p}.self_attn.{n}_proj.lora_A.weight", (R, H), f32)
        add(f"{p}.self_attn.{n}_proj.lora_B.weight", (H, R), f32)
    add(f"{p}.self_attn.rotary_emb.inv_freq", (64,), f16, "invfreq")
    add(f"{p}.mlp.gate_proj.weight", (F, H), f16)
    add(f"{p}.mlp.up_proj.weight", (F, H), f16)
    add(f"{p}.mlp.down_proj.weight", (H, F), f16)
    add(f"{p}.mlp.up_proj.lora_A.weight", (R, H), f32)
    add(f"{p}.mlp.up_proj.lora_B.weight", (F, R), f32)
    add(f"{p}.mlp.down_proj.lora_A.weight", (R, F), f32)
    add(f"{p}.mlp.down_proj.lora_B.weight", (H, R), f32)
    add(f"{p}.input_layernorm.weight", (H,), f16, "one")
    add(f"{p}.post_attention_layernorm.weight", (H,), f16, "one")
add("internlm_model.model.norm.weight", (H,), f16, "one")
add("internlm_model.lm_head.weight", (V, H), f16)


def make(shape, dtype, kind):
    if kind == "one":
        return torch.ones(shape, dtype=dtype)
    if kind == "invfreq":
        return (1.0 / 10000 ** (torch.arange(0, 128, 2).float() / 128)).to(dtype)
    return (torch.randn(shape, device=dev) * 0.02).to(dtype).cpu()


total = sum(torch.Size(s).numel() * (2 if d == f16 else 4) for _, s, d, _ in keys)
params = sum(torch.Size(s).numel() for _, s, _, _ in keys)
shards, cur, size = [], [], 0
for k in keys:
    cur.append(k)
    size += torch.Size(k[1]).numel() * (2 if k[2] == f16 else 4)
    if size > total / 4 and len(shards) < 3:
        shards.append(cur)
        cur, size = [], 0
shards.append(cur)
weight_map = {}
for i, sh in enumerate(shards):
    name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
    torch.save({k: make(s, d, kind) for k, s, d, kind in sh}, os.path.join(out, name))
    weight_map.update({k: name for k, _, _, _ in sh})
json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, open(os.path.join(out, "pytorch_model.bin.index.json"), "w"), indent=2)
cfg = {"architectures": ["InternLMXComposerForCausalLM"], "model_type": "InternLMXComposer", "bias": True, "bos_token_id": 1, "eos_token_id": 2,
       "hidden_act": "silu", "hidden_size": H, "intermediate_size": F, "num_attention_heads": 32, "num_hidden_layers": L, "vocab_size": V,
       "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "num_query_token": NQ, "tie_word_embeddings": False, "kqvo_bias": True,
       "intern_converted_llm": True, "internlm_lora": {"lora_r": R, "lora_alpha": R, "lora_dropout": 0.05, "learn_param": ["q", "v", "ffn"], "freeze": False},
       "torch_dtype": "float16"}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
shutil.copy(tok, os.path.join(out, "tokenizer.model"))
print(json.dumps({"parameters": params, "bytes": total, "shards": len(shards)}))
