/* One instruction example as training tokens and a loss mask.
 *
 * With the model's chat template (mop_chat_format) the example renders as
 *
 *   PROMPT   = [default system turn] <|im_start|>user\nINSTRUCTION<|im_end|>\n
 *              <|im_start|>assistant\n             (the add_assistant_prompt form)
 *   FULL     = PROMPT RESPONSE <|im_end|> \n        (the two-message form)
 *
 * The pieces are tokenized separately and concatenated:
 *
 *   tokens = tok(PROMPT, BOS if the model uses one, control tokens parsed)
 *          ++ tok(RESPONSE, plain text)
 *          ++ [first token of tok(TAIL, control tokens parsed)]   (the end of turn)
 *
 * where TAIL is what FULL has after PROMPT RESPONSE ("<|im_end|>\n"). Its
 * first token must be the end-of-turn id; the newline after it is dropped (it
 * would be a position that is never a target). loss_mask is 1 on the response
 * tokens and the end-of-turn token, 0 on the prompt. Tokenizing the pieces
 * makes the prompt/response boundary exact; because PROMPT ends in "\n" (a
 * pre-tokenizer split point) the ids equal those of tokenizing FULL in one
 * go, which tests/python/test_example.py checks on the real model against
 * Hugging Face `tokenizers`. The response is not parsed for control tokens,
 * so a response containing the literal text "<|im_end|>" cannot end the turn
 * early. */
#include <string.h>

#include "internal.h"
#include "libmop/mop_gate.h"

/* Render messages into a fresh NUL-terminated buffer (*out, *len). */
static mop_status render(const mop_model *model, const mop_chat_message *msgs, size_t n_msgs,
                         int32_t add_assistant, char **out, size_t *len)
{
    size_t n = 0;
    mop_status st = mop_chat_format(model, msgs, n_msgs, add_assistant, NULL, 0, &n);
    if (st != MOP_OK && st != MOP_E_RANGE)
        return st;
    char *buf = mop_alloc(n + 1);
    if (!buf)
        return mop_fail(MOP_E_NOMEM, "mop_tokenize_example: out of memory (%zu bytes)", n + 1);
    st = mop_chat_format(model, msgs, n_msgs, add_assistant, buf, n + 1, &n);
    if (st != MOP_OK) {
        mop_free(buf);
        return st;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return MOP_OK;
}

/* Tokenize text into a fresh buffer (*ids, *n). */
static mop_status tokenize(const mop_model *model, const char *text, size_t len, int32_t flags,
                           int32_t **ids, size_t *n)
{
    size_t need = 0;
    mop_status st = mop_tokenize(model, text, len, flags, NULL, 0, &need);
    if (st != MOP_OK && st != MOP_E_RANGE)
        return st;
    int32_t *buf = mop_alloc((need ? need : 1) * sizeof *buf);
    if (!buf)
        return mop_fail(MOP_E_NOMEM, "mop_tokenize_example: out of memory (%zu tokens)", need);
    st = mop_tokenize(model, text, len, flags, buf, need, &need);
    if (st != MOP_OK) {
        mop_free(buf);
        return st;
    }
    *ids = buf;
    *n = need;
    return MOP_OK;
}

mop_status mop_tokenize_example(const mop_model *model, const char *instruction,
                                const char *response, int32_t *tokens, uint8_t *loss_mask,
                                size_t cap, size_t *n_out)
{
    return mop_tokenize_example_v2(model, NULL, instruction, response, tokens, loss_mask, cap,
                                   n_out);
}

mop_status mop_tokenize_example_v2(const mop_model *model, const char *system,
                                   const char *instruction, const char *response,
                                   int32_t *tokens, uint8_t *loss_mask, size_t cap,
                                   size_t *n_out)
{
    MOP_CHECK_ARG(model);
    MOP_CHECK_ARG(instruction);
    MOP_CHECK_ARG(response);
    MOP_CHECK_ARG(n_out);
    MOP_CHECK_ARG((tokens && loss_mask) || cap == 0);

    /* with a system text, it is the first message (the template's default is then not used) */
    const mop_chat_message all[3] = {{"system", system ? system : ""},
                                     {"user", instruction},
                                     {"assistant", response}};
    const mop_chat_message *msgs = system ? all : all + 1;
    char *prompt = NULL, *full = NULL;
    int32_t *p_ids = NULL, *r_ids = NULL, *t_ids = NULL;
    size_t p_len = 0, f_len = 0, n_p = 0, n_r = 0, n_t = 0;
    size_t r_len = strlen(response);
    mop_status st;

    const size_t n_ctx_msgs = system ? 2 : 1; /* messages before the response */
    if ((st = render(model, msgs, n_ctx_msgs, 1, &prompt, &p_len)) != MOP_OK ||
        (st = render(model, msgs, n_ctx_msgs + 1, 0, &full, &f_len)) != MOP_OK)
        goto out;
    if (f_len < p_len + r_len || memcmp(full, prompt, p_len) != 0 ||
        memcmp(full + p_len, response, r_len) != 0) {
        st = mop_fail(MOP_E_UNSUPPORTED,
                      "mop_tokenize_example: the chat template does not render the assistant "
                      "turn as the generation prompt followed by the response");
        goto out;
    }
    const char *tail = full + p_len + r_len;
    size_t tail_len = f_len - p_len - r_len;

    if ((st = tokenize(model, prompt, p_len, MOP_TOKENIZE_ADD_BOS | MOP_TOKENIZE_PARSE_SPECIAL,
                       &p_ids, &n_p)) != MOP_OK ||
        (st = tokenize(model, response, r_len, 0, &r_ids, &n_r)) != MOP_OK ||
        (st = tokenize(model, tail, tail_len, MOP_TOKENIZE_PARSE_SPECIAL, &t_ids, &n_t)) != MOP_OK)
        goto out;
    int32_t eot = mop_model_special_token(model, MOP_TOKEN_EOT);
    if (n_t == 0 || eot < 0 || t_ids[0] != eot) {
        st = mop_fail(MOP_E_UNSUPPORTED,
                      "mop_tokenize_example: the assistant turn does not end with the "
                      "end-of-turn token (id %d)", (int)eot);
        goto out;
    }

    size_t n = n_p + n_r + 1;
    *n_out = n;
    if (n > cap) {
        st = mop_fail(MOP_E_RANGE, "mop_tokenize_example: %zu tokens needed, capacity %zu", n,
                      cap);
        goto out;
    }
    memcpy(tokens, p_ids, n_p * sizeof *tokens);
    memcpy(tokens + n_p, r_ids, n_r * sizeof *tokens);
    tokens[n_p + n_r] = eot;
    memset(loss_mask, 0, n_p);
    memset(loss_mask + n_p, 1, n_r + 1);
    st = MOP_OK;
out:
    mop_free(prompt);
    mop_free(full);
    mop_free(p_ids);
    mop_free(r_ids);
    mop_free(t_ids);
    return st;
}
