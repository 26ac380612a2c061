/* quickstart: the whole libmop workflow in one small program.
 *
 *   quickstart MODEL.gguf [mixture.safetensors]
 *
 * load a model -> tokenize a chat prompt -> generate a reply -> perplexity of
 * a sentence -> create a prompt mixture -> one training step -> save the
 * mixture -> free everything. Every call is checked; on failure the program
 * prints mop_last_error() and still frees what it created. Public API only
 * (docs/GETTING_STARTED_C.md walks through it). */
#include <stdio.h>
#include <string.h>

#include <libmop/mop.h>

#define MAX_TOKENS 256

/* Print the failing step with the library's detail; returns 1 for main. */
static int fail(const char *step, mop_status st)
{
    fprintf(stderr, "quickstart: %s: %s (%s)\n", step, mop_last_error(), mop_status_name(st));
    return 1;
}

/* mop_token_fn: print each generated token as it arrives. */
static int print_token(int32_t token, void *user)
{
    const mop_model *model = user;
    char piece[64];
    size_t n = 0;
    if (mop_detokenize(model, &token, 1, 0, piece, sizeof piece, &n) == MOP_OK) {
        fwrite(piece, 1, n, stdout);
        fflush(stdout);
    }
    return 0; /* non-zero would stop the generation */
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: quickstart MODEL.gguf [mixture.safetensors]\n");
        return 2;
    }
    const char *out_path = argc > 2 ? argv[2] : "quickstart-mixture.safetensors";

    int rc = 1;
    mop_status st;
    mop_model *model = NULL;
    mop_ctx *ctx = NULL;
    mop_sampler *sampler = NULL;
    mop_mixture *mix = NULL;
    mop_optimizer *opt = NULL;

    printf("libmop %s\n", mop_version());

    /* 1. load (GGUF or safetensors; quantized tensors become F32) */
    if ((st = mop_model_load(argv[1], NULL, &model)) != MOP_OK) {
        rc = fail("loading the model", st);
        goto done;
    }
    mop_model_info info = {.struct_size = sizeof info};
    if ((st = mop_model_get_info(model, &info)) != MOP_OK) {
        rc = fail("model info", st);
        goto done;
    }
    printf("model: %s, %d layers, width %d, vocabulary %d\n", info.arch, info.n_layer,
           info.n_embd, info.n_vocab);

    /* 2. a context: KV cache and scratch, one thread of the program at a time */
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = 512;
    cp.n_batch = 512;
    if ((st = mop_ctx_create(model, &cp, &ctx)) != MOP_OK) {
        rc = fail("creating a context", st);
        goto done;
    }

    /* 3. tokenize a chat turn with the model's template */
    mop_chat_message msg = {"user", "What is the capital of France?"};
    char chat[1024];
    size_t chat_len = 0;
    if ((st = mop_chat_format(model, &msg, 1, 1, chat, sizeof chat, &chat_len)) != MOP_OK) {
        rc = fail("chat template", st);
        goto done;
    }
    int32_t prompt[MAX_TOKENS];
    size_t n_prompt = 0;
    st = mop_tokenize(model, chat, chat_len, MOP_TOKENIZE_PARSE_SPECIAL, prompt, MAX_TOKENS,
                      &n_prompt);
    if (st != MOP_OK) { /* MOP_E_RANGE: n_prompt tells how many ids are needed */
        rc = fail("tokenizing the prompt", st);
        goto done;
    }

    /* 4. generate greedily, streaming the reply */
    mop_sampler_params sp;
    mop_sampler_params_init(&sp);
    sp.temperature = 0.0f; /* greedy */
    if ((st = mop_sampler_create(&sp, &sampler)) != MOP_OK) {
        rc = fail("creating a sampler", st);
        goto done;
    }
    int32_t n_gen = 0;
    printf("reply: ");
    st = mop_generate(ctx, sampler, prompt, (int32_t)n_prompt, 32, print_token, model, &n_gen);
    printf("\n");
    if (st != MOP_OK) {
        rc = fail("generating", st);
        goto done;
    }
    printf("(%d tokens)\n", n_gen);

    /* 5. perplexity of a sentence (exp of the mean next-token NLL) */
    const char *text = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.";
    int32_t toks[MAX_TOKENS];
    size_t n_toks = 0;
    if ((st = mop_tokenize(model, text, strlen(text), MOP_TOKENIZE_ADD_BOS, toks, MAX_TOKENS,
                           &n_toks)) != MOP_OK) {
        rc = fail("tokenizing the text", st);
        goto done;
    }
    double ppl = 0;
    if ((st = mop_ctx_perplexity(ctx, toks, (int32_t)n_toks, 0, NULL, NULL, &ppl)) != MOP_OK) {
        rc = fail("perplexity", st);
        goto done;
    }
    printf("perplexity of the sentence: %.3f over %zu tokens\n", ppl, n_toks);

    /* 6. a prompt mixture: K experts of P soft tokens and a gate (paper defaults
     *    elsewhere: gate and injection layer at n_layer/3, attention-bias mode) */
    mop_mixture_params mp;
    mop_mixture_params_init(&mp);
    mp.n_experts = 4;
    mp.prompt_len = 4;
    if ((st = mop_mixture_create(model, &mp, &mix)) != MOP_OK) {
        rc = fail("creating the mixture", st);
        goto done;
    }
    if ((st = mop_mixture_get_params(mix, &mp)) != MOP_OK) { /* resolves the -1 defaults */
        rc = fail("mixture params", st);
        goto done;
    }
    printf("mixture: K=%d P=%d gate layer %d, injection layer %d, %zu trainable floats\n",
           mp.n_experts, mp.prompt_len, mp.gate_layer, mp.inject_layer,
           mop_mixture_n_params(mix));

    /* 7. one training step on one instruction example */
    int32_t ex_tokens[MAX_TOKENS];
    uint8_t ex_mask[MAX_TOKENS];
    size_t ex_len = 0;
    if ((st = mop_tokenize_example(model, "Translate the English word \"cat\" into French.",
                                   "chat", ex_tokens, ex_mask, MAX_TOKENS, &ex_len)) != MOP_OK) {
        rc = fail("tokenizing the example", st);
        goto done;
    }
    int32_t len = (int32_t)ex_len;
    mop_batch batch = {.struct_size = sizeof batch, .n_seq = 1, .seq_len = len,
                       .tokens = ex_tokens, .lengths = &len, .loss_mask = ex_mask};

    float *params = NULL, *grads = NULL;
    size_t n_params = 0;
    if ((st = mop_mixture_data(mix, &params, &grads, &n_params)) != MOP_OK) {
        rc = fail("mixture buffers", st);
        goto done;
    }
    mop_adamw_params ap;
    mop_adamw_params_init(&ap); /* lr 3e-3, clip 1 */
    if ((st = mop_optimizer_create(n_params, &ap, &opt)) != MOP_OK) {
        rc = fail("creating the optimizer", st);
        goto done;
    }

    mop_loss_params lp;
    mop_loss_params_init(&lp); /* mean NLL of the response tokens */
    mop_loss_result before = {.struct_size = sizeof before};
    mop_mixture_zero_grad(mix); /* gradients accumulate: clear them each step */
    if ((st = mop_mixture_forward_backward(ctx, mix, &batch, &lp, &before)) != MOP_OK) {
        rc = fail("forward/backward", st);
        goto done;
    }
    float lr = 0, grad_norm = 0;
    if ((st = mop_optimizer_step(opt, params, grads, n_params, 1.0f, &lr, &grad_norm)) != MOP_OK) {
        rc = fail("optimizer step", st);
        goto done;
    }
    double nll_after = 0;
    int32_t n_targets = 0;
    const mop_mixture *const mixtures[1] = {mix};
    if ((st = mop_mixture_evaluate(ctx, mixtures, 1, &batch, &nll_after, &n_targets, NULL)) !=
        MOP_OK) {
        rc = fail("evaluating", st);
        goto done;
    }
    printf("training step: loss %.4f -> %.4f (%d target tokens, lr %.1e, grad norm %.3f)\n",
           before.loss, nll_after / n_targets, n_targets, lr, grad_norm);

    /* 8. save (safetensors, written atomically); mop_mixture_load() reads it back */
    if ((st = mop_mixture_save(mix, out_path)) != MOP_OK) {
        rc = fail("saving the mixture", st);
        goto done;
    }
    printf("saved %s\n", out_path);
    rc = 0;

done:
    /* 9. free: every _free accepts NULL; contexts and mixtures hold their own
     *    reference on the model, so the order does not matter */
    mop_optimizer_free(opt);
    mop_mixture_free(mix);
    mop_sampler_free(sampler);
    mop_ctx_free(ctx);
    mop_model_free(model);
    return rc;
}
