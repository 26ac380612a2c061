/* One decode step for B sequences on B mixtures: mop_decoder_step (one
 * batched pass, the weights read once) against B single-sequence steps
 * (B contexts, each with its mixture attached, one mop_ctx_decode each).
 * Not a test: prints one table for docs/PERFORMANCE.md.
 *
 *   build/tests/bench/bench_decoder MODEL [B=8] [n_threads=2] [steps=16]
 *
 * Sequences have prompts of 24 tokens (prefilled before timing); sequence i
 * uses mixture i % 4 (K = 8, P = 8, attention-bias, default parameters).
 * Each timing is the best of 3 runs of `steps` steps (the machine may be
 * shared: the minimum is the least disturbed run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libmop/mop.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define CHECK(x)                                                                           \
    do {                                                                                   \
        mop_status s_ = (x);                                                               \
        if (s_ != MOP_OK) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, mop_status_name(s_),     \
                    mop_last_error());                                                     \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

enum { NMIX = 4, PROMPT = 24, MAXB = 64 };

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [B=8] [n_threads=2] [steps=16]\n", argv[0]);
        return 2;
    }
    int B = argc > 2 ? atoi(argv[2]) : 8, nth = argc > 3 ? atoi(argv[3]) : 2;
    int steps = argc > 4 ? atoi(argv[4]) : 16;
    if (B < 1 || B > MAXB || nth < 0 || steps < 1)
        return 2;
    mop_model *model = NULL;
    CHECK(mop_model_load(argv[1], NULL, &model));
    mop_model_info mi = {.struct_size = sizeof mi};
    CHECK(mop_model_get_info(model, &mi));
    mop_mixture *mx[NMIX];
    for (int k = 0; k < NMIX; k++) {
        mop_mixture_params p = mop_mixture_default_params();
        p.seed = 100 + (uint64_t)k;
        CHECK(mop_mixture_create(model, &p, &mx[k]));
    }
    int32_t prompt[MAXB][PROMPT];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < PROMPT; t++)
            prompt[b][t] = (int32_t)((b * 7919 + t * 104729) % mi.n_vocab);
    const int n_ctx = PROMPT + 3 * steps + 8;

    /* B contexts, each with its mixture */
    mop_ctx *ctx[MAXB];
    mop_ctx_params cp = mop_ctx_default_params();
    cp.n_ctx = n_ctx;
    cp.n_threads = nth;
    for (int b = 0; b < B; b++) {
        CHECK(mop_ctx_create(model, &cp, &ctx[b]));
        CHECK(mop_ctx_set_mixture(ctx[b], mx[b % NMIX]));
        CHECK(mop_ctx_decode(ctx[b], prompt[b], PROMPT, MOP_LOGITS_LAST));
    }
    /* one decoder with the same B sequences */
    mop_decoder_params dp;
    CHECK(mop_decoder_params_init(&dp));
    dp.n_seq_max = B;
    dp.n_ctx = n_ctx;
    dp.n_threads = nth;
    mop_decoder *dec = NULL;
    CHECK(mop_decoder_create(model, &dp, &dec));
    int32_t ids[MAXB], tok[MAXB];
    const int32_t *toks[MAXB];
    int32_t ntok[MAXB];
    for (int b = 0; b < B; b++) {
        CHECK(mop_decoder_add(dec, mx[b % NMIX], &ids[b]));
        toks[b] = prompt[b];
        ntok[b] = PROMPT;
    }
    mop_decoder_batch first = {.struct_size = sizeof first, .n = B, .seq = ids,
                               .n_tokens = ntok, .tokens = toks};
    CHECK(mop_decoder_step(dec, &first));

    double best_seq = 1e30, best_bat = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int s = 0; s < steps; s++)
            for (int b = 0; b < B; b++) {
                int32_t t = (int32_t)((s * 31 + b) % mi.n_vocab);
                CHECK(mop_ctx_decode(ctx[b], &t, 1, MOP_LOGITS_LAST));
            }
        double dt = (now() - t0) / steps;
        best_seq = dt < best_seq ? dt : best_seq;
        t0 = now();
        for (int s = 0; s < steps; s++) {
            for (int b = 0; b < B; b++)
                tok[b] = (int32_t)((s * 31 + b) % mi.n_vocab);
            mop_decoder_batch st = {.struct_size = sizeof st, .n = B, .seq = ids, .token = tok};
            CHECK(mop_decoder_step(dec, &st));
        }
        dt = (now() - t0) / steps;
        best_bat = dt < best_bat ? dt : best_bat;
    }
    printf("model %s, %d threads, B = %d sequences on %d mixtures (K=8, P=8), prompt %d\n",
           mi.name, nth, B, NMIX, PROMPT);
    printf("%-34s %10.2f ms/step  %8.1f tok/s\n", "B single-sequence steps", best_seq * 1e3,
           B / best_seq);
    printf("%-34s %10.2f ms/step  %8.1f tok/s\n", "one mop_decoder_step (batched)",
           best_bat * 1e3, B / best_bat);
    printf("speed-up (sequential / batched)   %10.2fx\n", best_seq / best_bat);
    mop_decoder_free(dec);
    for (int b = 0; b < B; b++)
        mop_ctx_free(ctx[b]);
    for (int k = 0; k < NMIX; k++)
        mop_mixture_free(mx[k]);
    mop_model_free(model);
    return 0;
}
