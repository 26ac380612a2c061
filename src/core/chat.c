/* Chat templates. libmop does not run Jinja; it recognises the ChatML family
 * ("<|im_start|>" in the template) and renders it directly:
 *
 *   [<|im_start|>system\nDEFAULT<|im_end|>\n]   if the template has a default
 *                                              system message and messages[0]
 *                                              is not a system one
 *   <|im_start|>ROLE\nCONTENT<|im_end|>\n       per message
 *   <|im_start|>assistant\n                     if add_assistant_prompt
 *
 * DEFAULT is read from the template itself: the string literal that follows
 * "<|im_start|>system\n" up to "<|im_end|>" (SmolLM2: "You are a helpful AI
 * assistant named SmolLM, trained by Hugging Face"). */
#include <string.h>

#include "model.h"
#include "tokenizer.h"

static const char IM_START[] = "<|im_start|>";
static const char IM_END[] = "<|im_end|>";

static void put(char *buf, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n < cap)
        memcpy(buf + *n, s, MOP_MIN(len, cap - *n));
    *n += len;
}

static void put_str(char *buf, size_t cap, size_t *n, const char *s)
{
    put(buf, cap, n, s, strlen(s));
}

/* Find the default system text in a ChatML template: [*begin, *end) of the
 * literal as written in the template (still with Jinja escapes). 0 if none. */
static int find_default_system(const char *tpl, const char **begin, const char **end)
{
    static const char key[] = "<|im_start|>system";
    for (const char *p = strstr(tpl, key); p; p = strstr(p + 1, key)) {
        const char *s = p + strlen(key);
        if (*s == '\n')
            s += 1;
        else if (s[0] == '\\' && s[1] == 'n')
            s += 2;
        else
            continue;
        /* a literal: no quote or template delimiter before <|im_end|> */
        const char *q = s;
        int literal = 1;
        while (*q && strncmp(q, IM_END, strlen(IM_END)) != 0) {
            if (*q == '\\' && q[1]) {
                q += 2;
                continue;
            }
            if (*q == '\'' || *q == '"' || *q == '{' || *q == '}') {
                literal = 0;
                break;
            }
            q++;
        }
        if (literal && *q && q > s) {
            *begin = s;
            *end = q;
            return 1;
        }
    }
    return 0;
}

/* Write a Jinja string literal's text, resolving its backslash escapes. */
static void put_unescaped(char *buf, size_t cap, size_t *n, const char *s, const char *end)
{
    while (s < end) {
        char c = *s++;
        if (c == '\\' && s < end) {
            char e = *s++;
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        }
        put(buf, cap, n, &c, 1);
    }
}

static void put_turn(char *buf, size_t cap, size_t *n, const char *role)
{
    put_str(buf, cap, n, IM_START);
    put_str(buf, cap, n, role);
    put_str(buf, cap, n, "\n");
}

mop_status mop_chat_render(const mop_tokenizer *t, const mop_chat_message *messages,
                           size_t n_messages, int32_t add_assistant_prompt, char *buf,
                           size_t cap, size_t *n_out)
{
    MOP_CHECK_ARG(t && n_out);
    MOP_CHECK_ARG(messages || n_messages == 0);
    MOP_CHECK_ARG(buf || cap == 0);
    for (size_t i = 0; i < n_messages; i++)
        if (!messages[i].role || !messages[i].content || !messages[i].role[0])
            return mop_fail(MOP_E_INVALID_ARG, "chat: message %zu has no %s", i,
                            messages[i].content ? "role" : "content");
    const char *tpl = mop_tokenizer_chat_template(t);
    if (!tpl)
        return mop_fail(MOP_E_UNSUPPORTED, "chat: the model has no chat template");
    if (!strstr(tpl, IM_START))
        return mop_fail(MOP_E_UNSUPPORTED,
                        "chat: template not recognised (only ChatML templates are supported)");

    size_t n = 0;
    const char *def_b, *def_e;
    if (n_messages > 0 && strcmp(messages[0].role, "system") != 0 &&
        find_default_system(tpl, &def_b, &def_e)) {
        put_turn(buf, cap, &n, "system");
        put_unescaped(buf, cap, &n, def_b, def_e);
        put_str(buf, cap, &n, IM_END);
        put_str(buf, cap, &n, "\n");
    }
    for (size_t i = 0; i < n_messages; i++) {
        put_turn(buf, cap, &n, messages[i].role);
        put_str(buf, cap, &n, messages[i].content);
        put_str(buf, cap, &n, IM_END);
        put_str(buf, cap, &n, "\n");
    }
    if (add_assistant_prompt)
        put_turn(buf, cap, &n, "assistant");
    *n_out = n;
    if (n < cap)
        buf[n] = '\0';
    if (n > cap)
        return mop_fail(MOP_E_RANGE, "chat: the text needs %zu bytes, capacity is %zu", n, cap);
    return MOP_OK;
}

mop_status mop_chat_format(const mop_model *model, const mop_chat_message *messages,
                           size_t n_messages, int32_t add_assistant_prompt, char *buf, size_t cap,
                           size_t *n_out)
{
    if (!model)
        return mop_fail(MOP_E_INVALID_ARG, "mop_chat_format: model is NULL");
    if (!model->tok)
        return mop_fail(MOP_E_UNSUPPORTED, "mop_chat_format: model has no tokenizer");
    return mop_chat_render(model->tok, messages, n_messages, add_assistant_prompt, buf, cap,
                           n_out);
}
