// llama.cpp's side of the 4-bit agreement table (issue 20; scripts/llama-quant-agreement.sh builds
// it against the anchor build in ../shared/anchors): runs prompt ids through a GGUF with
// llama.cpp and prints one JSON line: the logits at the last prompt position and up to N greedy
// new ids (argmax, no penalty; the end-of-generation token that stops it included), as the
// fixture's greedy ids and `generate --json` have them.
//   llama_greedy MODEL N ID,ID,...
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

static int argmax(const float* v, int n) {
    int best = 0;
    for (int i = 1; i < n; ++i)
        if (v[i] > v[best]) best = i;
    return best;
}

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL N_NEW ID,ID,...\n", argv[0]);
        return 2;
    }
    int n_new = atoi(argv[2]);
    llama_token ids[4096];
    int n = 0;
    for (char* t = strtok(argv[3], ","); t && n < 4096; t = strtok(NULL, ",")) ids[n++] = atoi(t);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model* model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "%s: could not load\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n + n_new + 8;
    cp.n_batch = cp.n_ctx;
    cp.n_threads = cp.n_threads_batch = 2;
    struct llama_context* ctx = llama_init_from_model(model, cp);
    const struct llama_vocab* vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    if (llama_decode(ctx, llama_batch_get_one(ids, n)) != 0) return 1;
    const float* last = llama_get_logits_ith(ctx, -1);
    printf("{\"logits\": [");
    for (int i = 0; i < n_vocab; ++i) printf(i ? ",%.6g" : "%.6g", last[i]);
    printf("], \"generated_ids\": [");
    llama_token tok = argmax(last, n_vocab);
    for (int k = 0; k < n_new; ++k) {
        printf(k ? ",%d" : "%d", tok);
        if (llama_vocab_is_eog(vocab, tok)) break;
        if (llama_decode(ctx, llama_batch_get_one(&tok, 1)) != 0) return 1;
        tok = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
    }
    printf("]}\n");
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
