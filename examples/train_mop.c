/* train_mop: the smallest complete Mixture-of-Prompts training loop.
 *
 *   train_mop MODEL.gguf train.jsonl out.safetensors [steps]
 *
 * Loads a model, reads {"instruction", "response"} lines from a JSONL file,
 * trains K = 4 experts of P = 4 soft tokens with AdamW (one example per
 * batch), prints the loss and saves the mixture. Public API only; copy it
 * as a starting point. `mop train` is the full-featured version. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <libmop/mop.h>

#define MAX_TOKENS 256
#define MAX_EXAMPLES 1000

typedef struct example {
    int32_t tokens[MAX_TOKENS];
    uint8_t mask[MAX_TOKENS];
    int32_t len;
} example;

static int fail(const char *what)
{
    fprintf(stderr, "train_mop: %s: %s\n", what, mop_last_error());
    return 1;
}

/* Tokenize up to `cap` lines of a JSONL file; returns how many were kept. */
static int read_examples(const mop_model *model, const char *path, example *ex, int cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    static char line[1 << 16];
    int n = 0;
    while (n < cap && fgets(line, sizeof line, f)) {
        cJSON *obj = cJSON_Parse(line);
        const cJSON *ins = cJSON_GetObjectItemCaseSensitive(obj, "instruction");
        const cJSON *res = cJSON_GetObjectItemCaseSensitive(obj, "response");
        size_t len = 0;
        if (cJSON_IsString(ins) && cJSON_IsString(res) &&
            mop_tokenize_example(model, ins->valuestring, res->valuestring, ex[n].tokens,
                                 ex[n].mask, MAX_TOKENS, &len) == MOP_OK) {
            ex[n].len = (int32_t)len;
            n++; /* examples longer than MAX_TOKENS (MOP_E_RANGE) are skipped */
        }
        cJSON_Delete(obj);
    }
    fclose(f);
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: train_mop MODEL train.jsonl out.safetensors [steps]\n");
        return 2;
    }
    int steps = argc > 4 ? atoi(argv[4]) : 20;

    mop_model *model = NULL;
    if (mop_model_load(argv[1], NULL, &model) != MOP_OK)
        return fail("loading the model");

    static example ex[MAX_EXAMPLES];
    int n_ex = read_examples(model, argv[2], ex, MAX_EXAMPLES);
    if (n_ex <= 0) {
        fprintf(stderr, "train_mop: no usable examples in %s\n", argv[2]);
        mop_model_free(model);
        return 1;
    }

    /* the mixture: 4 experts x 4 tokens, gate and injection at n_layer / 3 */
    mop_mixture_params mp;
    mop_mixture_params_init(&mp);
    mp.n_experts = 4;
    mp.prompt_len = 4;
    mop_mixture *mix = NULL;
    if (mop_mixture_create(model, &mp, &mix) != MOP_OK)
        return fail("creating the mixture");

    /* a context long enough for the K*P prompt rows plus one example */
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_batch = cp.n_ctx = mp.n_experts * mp.prompt_len + MAX_TOKENS;
    mop_ctx *ctx = NULL;
    if (mop_ctx_create(model, &cp, &ctx) != MOP_OK)
        return fail("creating a context");

    /* AdamW over the mixture's flat parameter buffer, 10% warmup then cosine */
    float *params, *grads;
    size_t n_params;
    if (mop_mixture_data(mix, &params, &grads, &n_params) != MOP_OK)
        return fail("mixture data");
    mop_adamw_params ap;
    mop_adamw_params_init(&ap);
    ap.warmup_steps = steps / 10;
    ap.total_steps = steps;
    mop_optimizer *opt = NULL;
    if (mop_optimizer_create(n_params, &ap, &opt) != MOP_OK)
        return fail("creating the optimizer");

    mop_loss_params lp;
    mop_loss_params_init(&lp);
    for (int step = 0; step < steps; step++) {
        const example *e = &ex[step % n_ex];
        mop_batch batch = {.struct_size = sizeof batch, .n_seq = 1, .seq_len = e->len,
                           .tokens = e->tokens, .lengths = &e->len, .loss_mask = e->mask};
        mop_loss_result res = {sizeof res, 0, 0, 0};
        float lr;
        mop_mixture_zero_grad(mix);
        if (mop_mixture_forward_backward(ctx, mix, &batch, &lp, &res) != MOP_OK)
            return fail("forward/backward");
        if (mop_optimizer_step(opt, params, grads, n_params, 1.0f, &lr, NULL) != MOP_OK)
            return fail("optimizer step");
        printf("step %3d  loss %.4f  lr %.2e\n", step + 1, res.loss, lr);
    }

    if (mop_mixture_save(mix, argv[3]) != MOP_OK)
        return fail("saving the mixture");
    printf("saved %s (%zu parameters)\n", argv[3], n_params);

    mop_optimizer_free(opt);
    mop_ctx_free(ctx);
    mop_mixture_free(mix);
    mop_model_free(model);
    return 0;
}
