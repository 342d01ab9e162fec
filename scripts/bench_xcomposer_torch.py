"""PyTorch anchor of `xcomposer bench xcomposer`, at InternLM-XComposer-7B's shapes, random weights.

argv: DTYPE(f32|f16) PROMPT_LEN NEW_TOKENS RUNS
- decoder: transformers LlamaForCausalLM(hidden 4096, intermediate 11008, 32 layers, 32 heads,
  vocab 103168, attention_bias=True, rms eps 1e-5): InternLM-7B's math (q/k/v/o biases, rotate-half
  RoPE, SwiGLU, untied head). Prefill of PROMPT_LEN random embeddings (and of 512), then
  NEW_TOKENS greedy steps with the KV cache, the argmax kept on the GPU and fed straight back (no
  host synchronisation inside the loop: the best eager PyTorch does); median of RUNS.
- image: BLIP-2's EVA ViT-g (Blip2VisionModel: 1408 wide, 39 layers, 16 heads, MLP 6144, patch 14,
  224 px) + Q-Former (768 wide, 12 layers, cross-attention every 2nd, 64 queries) + a 768→4096
  Linear; median latency of RUNS encodes of one image.
Prints one JSON object.
"""
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel, LlamaConfig, LlamaForCausalLM

dtype = {"f32": torch.float32, "f16": torch.float16}[sys.argv[1]]
prompt_len, new_tokens, runs = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dev = "cuda"
torch.manual_seed(0)
res = {"torch": torch.__version__, "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0)}

with torch.device(dev):
    vit = Blip2VisionModel(Blip2VisionConfig(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                                             image_size=224, patch_size=14, qkv_bias=True)).to(dtype).eval()
    qf = Blip2QFormerModel(Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                              cross_attention_frequency=2, encoder_hidden_size=1408)).to(dtype).eval()
    queries = torch.randn(1, 64, 768, dtype=dtype)
    proj = torch.nn.Linear(768, 4096).to(dtype)
    x = torch.randn(1, 3, 224, 224, dtype=dtype)

def encode():
    h = vit(pixel_values=x).last_hidden_state
    q = qf(query_embeds=queries, encoder_hidden_states=h).last_hidden_state
    return proj(q)

with torch.no_grad():
    for _ in range(2):
        encode()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        encode()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
res["encode_ms"] = statistics.median(times) * 1e3
del vit, qf
torch.cuda.empty_cache()

cfg = LlamaConfig(vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, rms_norm_eps=1e-5, attention_bias=True, tie_word_embeddings=False, max_position_embeddings=2048)
with torch.device(dev):
    model = LlamaForCausalLM(cfg).to(dtype).eval()
emb = torch.randn(1, prompt_len, 4096, dtype=dtype, device=dev) * 0.02
emb512 = torch.randn(1, 512, 4096, dtype=dtype, device=dev) * 0.02


def prefill(e):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model(inputs_embeds=e, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    return time.perf_counter() - t, out.past_key_values, nxt


def decode():
    _, past, nxt = prefill(emb)
    t = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    return time.perf_counter() - t


with torch.no_grad():
    prefill(emb), prefill(emb512), decode()
    res["prefill_tps"] = prompt_len / statistics.median(prefill(emb)[0] for _ in range(runs))
    res["prefill512_tps"] = 512 / statistics.median(prefill(emb512)[0] for _ in range(runs))
    res["decode_tps"] = new_tokens / statistics.median(decode() for _ in range(runs))
print(json.dumps(res))
