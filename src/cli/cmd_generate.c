/* mop generate MODEL --prompt TEXT [--mixture FILE]: stream a continuation
 * (or a chat reply), with the base model or a trained prompt mixture. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_common.h"

/* Streaming state: bytes of a UTF-8 character split across tokens wait in
 * `pending` until the rest arrives, so stdout never sees half a character. */
typedef struct stream {
    const mop_model *model;
    char pending[8];
    size_t n_pending;
    int32_t n_tokens;
    mop_status error; /* first detokenize failure, reported after generation */
} stream;

/* Bytes at the end of s[0..n) that start a UTF-8 sequence not yet complete. */
static size_t incomplete_tail(const unsigned char *s, size_t n)
{
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = s[n - back];
        if ((c & 0xC0) == 0x80)
            continue; /* continuation byte: keep looking for the lead */
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                                   : (c & 0xF8) == 0xF0 ? 4 : 1;
        return back < need ? back : 0;
    }
    return 0; /* only continuation bytes: not ours to repair, pass them on */
}

static void emit(stream *s, const char *bytes, size_t n)
{
    /* pending (< 4 bytes) + new bytes, then hold back an incomplete tail */
    char local[512];
    char *buf = s->n_pending + n <= sizeof local ? local : malloc(s->n_pending + n);
    if (!buf)
        return;
    memcpy(buf, s->pending, s->n_pending);
    memcpy(buf + s->n_pending, bytes, n);
    size_t total = s->n_pending + n;
    size_t keep = incomplete_tail((const unsigned char *)buf, total);
    fwrite(buf, 1, total - keep, stdout);
    memcpy(s->pending, buf + total - keep, keep);
    s->n_pending = keep;
    if (buf != local)
        free(buf);
    fflush(stdout);
}

static int on_token(int32_t token, void *user)
{
    stream *s = user;
    s->n_tokens++;
    char piece[256];
    size_t n = 0;
    mop_status st = mop_detokenize(s->model, &token, 1, 0, piece, sizeof piece, &n);
    if (st == MOP_E_RANGE) {
        char *big = malloc(n + 1);
        if (big && mop_detokenize(s->model, &token, 1, 0, big, n + 1, &n) == MOP_OK)
            emit(s, big, n);
        free(big);
        return 0;
    }
    if (st != MOP_OK) {
        s->error = st;
        return 1;
    }
    emit(s, piece, n);
    return 0;
}

/* The prompt as one user message in the model's chat template, after a
 * system turn of `system` ("" = an empty turn) or, when NULL, the template's
 * default one. */
static char *format_chat(const mop_model *model, const char *system, const char *prompt,
                         size_t *len)
{
    mop_chat_message msgs[2] = {{"system", system}, {"user", prompt}};
    const mop_chat_message *msg = system ? msgs : msgs + 1;
    size_t n_msg = system ? 2 : 1;
    size_t n = 0;
    mop_status st = mop_chat_format(model, msg, n_msg, 1, NULL, 0, &n);
    if (st != MOP_OK && st != MOP_E_RANGE) {
        cli_fail(st, "cannot apply the chat template");
        return NULL;
    }
    char *buf = malloc(n + 1);
    if (!buf) {
        cli_error("out of memory");
        return NULL;
    }
    st = mop_chat_format(model, msg, n_msg, 1, buf, n + 1, &n);
    if (st != MOP_OK) {
        free(buf);
        cli_fail(st, "cannot apply the chat template");
        return NULL;
    }
    *len = n;
    return buf;
}

static int32_t *tokenize_all(const mop_model *model, const char *text, size_t len, int32_t flags,
                             size_t *n_out)
{
    size_t n = 0;
    mop_status st = mop_tokenize(model, text, len, flags, NULL, 0, &n);
    if (st != MOP_OK && st != MOP_E_RANGE) {
        cli_fail(st, "cannot tokenize the prompt");
        return NULL;
    }
    int32_t *tokens = malloc((n ? n : 1) * sizeof *tokens);
    if (!tokens) {
        cli_error("out of memory");
        return NULL;
    }
    st = mop_tokenize(model, text, len, flags, tokens, n, &n);
    if (st != MOP_OK) {
        free(tokens);
        cli_fail(st, "cannot tokenize the prompt");
        return NULL;
    }
    *n_out = n;
    return tokens;
}

int cli_cmd_generate(int argc, char **argv)
{
    mop_sampler_params sp;
    mop_sampler_params_init(&sp);
    const char *prompt = NULL, *mix_path = NULL, *system = NULL;
    int32_t n_new = 64, chat = 0, n_threads = 0, n_ctx = 0, template_system = 0;
    const cli_opt opts[] = {
        {"prompt", 'p', CLI_STRING, &prompt, "TEXT", "prompt text (required)"},
        {"n-predict", 'n', CLI_INT, &n_new, "N", "tokens to generate at most; default 64"},
        {"chat", 0, CLI_FLAG, &chat, NULL, "wrap the prompt as a user turn in the chat template"},
        {"mixture", 'm', CLI_STRING, &mix_path, "FILE",
         "generate with this prompt mixture (from mop train): the gate reads the prompt"},
        {"system", 0, CLI_STRING, &system, "TEXT",
         "with --chat: the system turn; default \"\" (empty, as mop train) with --mixture, "
         "else the template's own"},
        {"template-system", 0, CLI_FLAG, &template_system, NULL,
         "with --chat: keep the template's default system turn (also with --mixture)"},
        {"temp", 0, CLI_FLOAT, &sp.temperature, "T", "temperature, 0 = greedy; default 0.8"},
        {"top-k", 0, CLI_INT, &sp.top_k, "K", "keep the K most likely tokens, 0 = all; default 40"},
        {"top-p", 0, CLI_FLOAT, &sp.top_p, "P", "nucleus sampling mass, 1 = off; default 0.95"},
        {"seed", 0, CLI_U64, &sp.seed, "S", "random seed; default 42"},
        {"threads", 't', CLI_INT, &n_threads, "N", "compute threads, 0 = all cores; default 0"},
        {"ctx", 'c', CLI_INT, &n_ctx, "N",
         "context (KV cache) size; default prompt + N, capped at the model's"},
        {NULL, 0, CLI_FLAG, NULL, NULL, NULL},
    };
    const cli_spec spec = {"generate", "MODEL --prompt TEXT [--mixture FILE] [options]",
                           "Generate text after a prompt and stream it to stdout. Stops after N\n"
                           "tokens or at the end-of-sequence / end-of-turn token. With --chat the\n"
                           "prompt becomes one user message and the reply is the assistant turn.\n"
                           "With --mixture the trained mixture is attached to the context: its\n"
                           "gate reads the prompt, its experts are prepended at the injection\n"
                           "layer, and decoding continues with both. Train with the same chat\n"
                           "template and system turn as you generate with (mop train's default\n"
                           "is an empty system turn, which --chat --mixture also uses).",
                           opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;
    if (!prompt)
        return cli_usage_error("generate", "--prompt is required");
    if (n_new < 0)
        return cli_usage_error("generate", "-n must be >= 0, got %d", (int)n_new);
    if (n_threads < 0 || n_ctx < 0)
        return cli_usage_error("generate", "--threads and --ctx must be >= 0");
    if ((system || template_system) && !chat)
        return cli_usage_error("generate", "--system and --template-system need --chat");
    if (system && template_system)
        return cli_usage_error("generate", "--system and --template-system exclude each other");

    mop_model *model = cli_load_model(pos[0], n_threads);
    if (!model)
        return CLI_ERROR;
    mop_ctx *ctx = NULL;
    mop_sampler *sampler = NULL;
    mop_mixture *mix = NULL;
    char *text = NULL;
    int32_t *tokens = NULL;
    rc = CLI_ERROR;
    if (mix_path) {
        mop_mixture_params mp;
        if (cli_load_mixture(model, mix_path, &mix, &mp) != CLI_OK)
            goto out;
        if (!system && !template_system)
            system = ""; /* mop train's default system turn */
    }

    size_t len = strlen(prompt), n_prompt = 0;
    if (chat) {
        text = format_chat(model, template_system ? NULL : system, prompt, &len);
        if (!text)
            goto out;
    }
    int32_t flags = MOP_TOKENIZE_ADD_BOS | (chat ? MOP_TOKENIZE_PARSE_SPECIAL : 0);
    tokens = tokenize_all(model, text ? text : prompt, len, flags, &n_prompt);
    if (!tokens)
        goto out;
    if (n_prompt == 0) {
        rc = cli_error("the prompt is empty after tokenization");
        goto out;
    }

    mop_model_info mi;
    memset(&mi, 0, sizeof mi);
    mi.struct_size = sizeof mi;
    mop_status st = mop_model_get_info(model, &mi);
    if (st != MOP_OK) {
        rc = cli_fail(st, "cannot describe model '%s'", pos[0]);
        goto out;
    }
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_threads = n_threads;
    if (n_ctx > 0) {
        cp.n_ctx = n_ctx;
    } else {
        int64_t want = (int64_t)n_prompt + n_new;
        cp.n_ctx = (int32_t)(want < mi.n_ctx_train ? want : mi.n_ctx_train);
    }
    if (cp.n_batch > cp.n_ctx)
        cp.n_batch = cp.n_ctx;
    st = mop_ctx_create(model, &cp, &ctx);
    if (st != MOP_OK) {
        rc = cli_fail(st, "cannot create a context of %d tokens", (int)cp.n_ctx);
        goto out;
    }
    if (mix) {
        st = mop_ctx_set_mixture(ctx, mix);
        if (st != MOP_OK) {
            rc = cli_fail(st, "cannot use mixture '%s'", mix_path);
            goto out;
        }
    }
    sp.struct_size = sizeof sp;
    st = mop_sampler_create(&sp, &sampler);
    if (st != MOP_OK) {
        rc = cli_fail(st, "invalid sampling options");
        goto out;
    }

    stream s = {.model = model};
    int32_t n_generated = 0;
    double t0 = cli_now();
    st = mop_generate(ctx, sampler, tokens, (int32_t)n_prompt, n_new, on_token, &s, &n_generated);
    double dt = cli_now() - t0;
    if (s.n_pending)
        fwrite(s.pending, 1, s.n_pending, stdout); /* an unfinished character at the end */
    fputc('\n', stdout);
    fflush(stdout);
    if (st != MOP_OK) {
        rc = cli_fail(st, "generation failed");
        goto out;
    }
    if (s.error != MOP_OK) {
        rc = cli_fail(s.error, "cannot detokenize a generated token");
        goto out;
    }
    if (cli_progress_enabled())
        fprintf(stderr, "mop: %zu prompt tokens, %d generated in %.2f s\n", n_prompt,
                (int)n_generated, dt);
    rc = CLI_OK;
out:
    mop_sampler_free(sampler);
    mop_ctx_free(ctx);
    mop_mixture_free(mix);
    free(tokens);
    free(text);
    mop_model_free(model);
    return rc;
}
