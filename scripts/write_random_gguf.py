"""Writes a random-weight f16 GGUF of a decoder shape in llama.cpp's `llama` layout, the anchor
`xcomposer bench engine --shape S` compares with (f32 norms, a dummy SentencePiece vocabulary).
Shapes: internlm7b (XComposer's decoder, q/k/v/o biases; as ../shared/anchors/gpu/write_gguf.py)
and smollm2 (SmolLM2-135M: GQA 9/3 heads, tied embeddings, no biases).
Usage (on the GPU machine): PYTHONPATH=llama.cpp/gguf-py python3 write_random_gguf.py SHAPE OUT.gguf"""
import sys, numpy as np, torch, gguf

SHAPES = {
    # hidden, ffn, layers, heads, kv heads, vocab, biases, tied, rope base, rms eps, context
    "internlm7b": (4096, 11008, 32, 32, 32, 103168, True, False, 10000.0, 1e-6, 2048),
    "smollm2": (576, 1536, 30, 9, 3, 49152, False, True, 100000.0, 1e-5, 8192),
}
shape, out = sys.argv[1], sys.argv[2]
H, F, L, NH, NKV, V, BIAS, TIED, THETA, EPS, CTX = SHAPES[shape]
HD = H // NH
w = gguf.GGUFWriter(out, "llama")
w.add_name(f"{shape}-shape-random"); w.add_block_count(L); w.add_context_length(CTX)
w.add_embedding_length(H); w.add_feed_forward_length(F); w.add_head_count(NH); w.add_head_count_kv(NKV)
w.add_layer_norm_rms_eps(EPS); w.add_rope_dimension_count(HD); w.add_rope_freq_base(THETA); w.add_file_type(1)
toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
toks += [f"\u2581t{i}" for i in range(V - len(toks))]
types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)
w.add_tokenizer_model("llama"); w.add_token_list(toks); w.add_token_scores([0.0] * V); w.add_token_types(types)
w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
g = torch.Generator(device="cuda").manual_seed(0)
def r(*s): return (torch.randn(*s, generator=g, device="cuda", dtype=torch.float16) * 0.02).cpu().numpy()
def ones(n): return np.ones(n, dtype=np.float32)
def zeros(n): return np.zeros(n, dtype=np.float32)
w.add_tensor("token_embd.weight", r(V, H)); w.add_tensor("output_norm.weight", ones(H))
if not TIED:
    w.add_tensor("output.weight", r(V, H))
for i in range(L):
    p = f"blk.{i}."
    w.add_tensor(p + "attn_norm.weight", ones(H)); w.add_tensor(p + "ffn_norm.weight", ones(H))
    for n, rows in (("attn_q", NH * HD), ("attn_k", NKV * HD), ("attn_v", NKV * HD)):
        w.add_tensor(p + n + ".weight", r(rows, H))
        if BIAS: w.add_tensor(p + n + ".bias", zeros(rows))
    w.add_tensor(p + "attn_output.weight", r(H, NH * HD))
    if BIAS: w.add_tensor(p + "attn_output.bias", zeros(H))
    w.add_tensor(p + "ffn_gate.weight", r(F, H)); w.add_tensor(p + "ffn_up.weight", r(F, H)); w.add_tensor(p + "ffn_down.weight", r(H, F))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("wrote", out)
