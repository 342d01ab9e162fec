"""Agreement measures shared by the scripts that compare weight formats on the SmolLM2 fixture
prompts (scripts/gpu-check.sh for our engine, scripts/llama-quant-agreement.sh for llama.cpp)."""
import json
import struct


def agree(a, b):
    """How many leading ids two generated sequences share (the index of the first difference)."""
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def logit_errors(pairs):
    """(max-abs, mean-abs) difference over every element of every (ours, theirs) logits pair."""
    d = [abs(x - y) for ours, theirs in pairs for x, y in zip(ours, theirs, strict=True)]
    return max(d), sum(d) / len(d)


def reference_last_logits(path, case):
    """The fixture's logits of the prompt's last position: row 2 of `case{case}.last3_logits`
    ([3, vocab] float32) in logits.safetensors."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        t = header[f"case{case}.last3_logits"]
        assert t["dtype"] == "F32" and t["shape"][0] == 3, t
        start, end = t["data_offsets"]
        f.seek(8 + n + start)
        data = f.read(end - start)
    vocab = t["shape"][1]
    return list(struct.unpack(f"<{vocab}f", data[2 * vocab * 4:3 * vocab * 4]))
