"""Times llama.cpp (through llama-cpp-python) the way `xcomposer bench llm` times itself.

argv: MODEL.gguf THREADS GEN_TOKENS RUNS PROMPT_IDS_JSON
Prints one JSON object: version, prefill_tps, decode_tps (medians over RUNS, after one warm-up).
Prefill evaluates the whole prompt in one call; decode then feeds GEN_TOKENS greedy tokens one
at a time, each chosen by argmax of the last logits.
"""
import json
import statistics
import sys
import time

import llama_cpp
import numpy as np

model, threads, gen, runs, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=len(ids) + gen + 8,
                      n_batch=len(ids), n_ubatch=len(ids), verbose=False)


def run():
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    pp = len(ids) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(gen):
        # Logits of the last evaluated token (llama.cpp keeps only that row).
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        llm.eval([int(np.argmax(logits))])
    tg = gen / (time.perf_counter() - t)
    return pp, tg


run()
results = [run() for _ in range(runs)]
print(json.dumps({
    "version": llama_cpp.__version__,
    "prefill_tps": statistics.median(r[0] for r in results),
    "decode_tps": statistics.median(r[1] for r in results),
}))
