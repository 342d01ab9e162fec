"""Makes tests/fixtures/qwen2.5-coder-0.5b/expected.json: the reference numbers for the Chinese default
model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF), computed by transformers' GGUF loader, which
dequantizes every tensor to float32 and runs the PyTorch Qwen2 model on the CPU.

Usage (Debian's python3-torch 1.13 and a venv that sees it):
    /usr/bin/python3 -m venv --system-site-packages /tmp/qwen/venv
    /tmp/qwen/venv/bin/pip install transformers==4.47.1 gguf
    /tmp/qwen/venv/bin/python scripts/make_qwen_fixture.py MODEL.gguf tests/fixtures/qwen2.5-coder-0.5b/expected.json

MODEL.gguf is the file `xcomposer models fetch` assembles (qwen2.5-coder-0.5b-instruct-q4_k_m.gguf in the
models folder). Nothing here comes from our implementation.
"""

import hashlib
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

# Chat cases: (system message or None, user message). Two Chinese, one English, one mixed with a
# system message the way the composer prompts.
CASES = [
    (None, "用三句话介绍长城的历史。"),
    (None, "写一段关于春天的短文，描写花和雨。"),
    (None, "Write one paragraph about the Great Wall of China."),
    ("你是一位中文作家。", "为文章《咖啡的历史》写一个简短的大纲。"),
]
# Raw tokenizer cases: Chinese punctuation, digits (split one by one in Qwen2), mixed scripts,
# newlines, an emoji (several byte-level tokens), and the control tokens.
TOKENIZER_CASES = [
    "人类探索太空的历史可以追溯到1957年。",
    "Hello, 世界! 12345 apples\n\n  indented\ttab",
    "「引号」和（括号）、顿号；分号：冒号？！",
    "emoji 🚀 rocket, 火箭🚀。",
    "<|im_start|>user\n你好<|im_end|>\n",
]
NEW_TOKENS = 24
STOP_IDS = {151643, 151645}  # <|endoftext|>, <|im_end|>
LOGIT_STRIDE = 64  # every 64th vocabulary entry of the last position, besides the top 20
TOP = 20


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(model_path, out_path):
    folder, name = os.path.split(os.path.abspath(model_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    if not tok.chat_template:
        sys.exit("the GGUF tokenizer came without its chat template")
    cases = []
    for system, user in CASES:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        chat_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(chat_text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            logits = out.logits[0, -1].float()
            top = torch.topk(logits, TOP)
            # Greedy decoding with the KV cache, one token a step, until a stop token.
            new_ids, step = [], out
            for _ in range(NEW_TOKENS):
                nxt = int(step.logits[0, -1].argmax())
                new_ids.append(nxt)
                if nxt in STOP_IDS:
                    break
                step = model(torch.tensor([[nxt]]), past_key_values=step.past_key_values, use_cache=True)
        cases.append({
            "system": system,
            "user_message": user,
            "chat_text": chat_text,
            "prompt_ids": ids,
            "last_top_ids": top.indices.tolist(),
            "last_top_logits": [round(float(x), 5) for x in top.values],
            "last_strided_logits": [round(float(x), 5) for x in logits[::LOGIT_STRIDE]],
            "greedy_new_ids": new_ids,
            "greedy_text": tok.decode(new_ids, skip_special_tokens=False),
        })
        print(user, "->", cases[-1]["greedy_text"], file=sys.stderr)
    tokenizer_cases = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TOKENIZER_CASES]
    out = {
        "model_file": name,
        "model_sha256": sha256(model_path),
        "reference": f"transformers {transformers.__version__} GGUF loader (weights dequantized to float32), "
                     f"torch {torch.__version__} CPU, greedy decoding",
        "logit_stride": LOGIT_STRIDE,
        "vocab_size": int(logits.shape[0]),
        "cases": cases,
        "tokenizer_cases": tokenizer_cases,
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
