/* Tokenizer data from model files: GGUF metadata (tokenizer.ggml.*) and
 * Hugging Face tokenizer.json (+ tokenizer_config.json). Both gather a
 * mop_tokenizer_spec and hand it to mop_tokenizer_create, which copies it. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "fileio.h"
#include "tokenizer.h"

/* ---- GGUF ------------------------------------------------------------------ */
static mop_status gguf_id(const gguf_file *g, const char *key, int32_t *out)
{
    int64_t v = -1;
    int found = 0;
    MOP_TRY(gguf_get_int(g, key, &v, &found));
    if (found && (v < -1 || v > INT32_MAX))
        return mop_fail(MOP_E_FORMAT, "%s = %lld out of range", key, (long long)v);
    *out = found ? (int32_t)v : -1;
    return MOP_OK;
}

static mop_status gguf_string_array(const gguf_file *g, const char *key, gguf_array *a)
{
    int found = 0;
    MOP_TRY(gguf_get_array(g, key, a, &found));
    if (!found)
        return mop_fail(MOP_E_FORMAT, "%s missing", key);
    if (a->elem_type != GGUF_TYPE_STRING)
        return mop_fail(MOP_E_FORMAT, "%s: expected an array of strings, got element type %d",
                        key, a->elem_type);
    if (a->n > INT32_MAX)
        return mop_fail(MOP_E_FORMAT, "%s: %llu entries is too many", key,
                        (unsigned long long)a->n);
    return MOP_OK;
}

static mop_status gguf_fill(const gguf_file *g, mop_tokenizer_spec *sp, mop_tok_str **tokens,
                            int32_t **types, mop_tok_str **merges)
{
    const char *s;
    size_t len;
    int found = 0;
    MOP_TRY(gguf_get_str(g, "tokenizer.ggml.model", &s, &len, &found));
    if (!found)
        return mop_fail(MOP_E_UNSUPPORTED, "no tokenizer in the file (tokenizer.ggml.model absent)");
    if (len != 4 || memcmp(s, "gpt2", 4) != 0)
        return mop_fail(MOP_E_UNSUPPORTED,
                        "tokenizer.ggml.model \"%.*s\" not supported (only \"gpt2\", byte-level BPE)",
                        (int)MOP_MIN(len, 64), s);
    MOP_TRY(gguf_get_str(g, "tokenizer.ggml.pre", &s, &len, &found));
    if (found)
        sp->pre = (mop_tok_str){s, len};

    gguf_array a;
    MOP_TRY(gguf_string_array(g, "tokenizer.ggml.tokens", &a));
    sp->n_tokens = (int32_t)a.n;
    *tokens = mop_alloc((size_t)MOP_MAX(a.n, 1) * sizeof **tokens);
    if (!*tokens)
        return mop_fail(MOP_E_NOMEM, "out of memory for %lld tokens", (long long)a.n);
    for (uint64_t i = 0; i < a.n; i++)
        MOP_TRY(gguf_array_str(&a, i, &(*tokens)[i].s, &(*tokens)[i].len));
    sp->tokens = *tokens;

    gguf_array ty;
    MOP_TRY(gguf_get_array(g, "tokenizer.ggml.token_type", &ty, &found));
    if (found) {
        if (ty.elem_type != GGUF_TYPE_INT32 && ty.elem_type != GGUF_TYPE_UINT32)
            return mop_fail(MOP_E_FORMAT, "tokenizer.ggml.token_type: expected int32, got type %d",
                            ty.elem_type);
        if (ty.n != a.n)
            return mop_fail(MOP_E_FORMAT, "tokenizer.ggml.token_type has %llu entries, %llu tokens",
                            (unsigned long long)ty.n, (unsigned long long)a.n);
        *types = mop_alloc((size_t)MOP_MAX(ty.n, 1) * sizeof **types);
        if (!*types)
            return mop_fail(MOP_E_NOMEM, "out of memory for token types");
        memcpy(*types, ty.data, (size_t)ty.n * sizeof **types); /* little-endian hosts */
        sp->token_types = *types;
    }

    gguf_array mg;
    MOP_TRY(gguf_string_array(g, "tokenizer.ggml.merges", &mg));
    sp->n_merges = (int32_t)mg.n;
    *merges = mop_alloc((size_t)MOP_MAX(2 * mg.n, 1) * sizeof **merges);
    if (!*merges)
        return mop_fail(MOP_E_NOMEM, "out of memory for %lld merges", (long long)mg.n);
    for (uint64_t i = 0; i < mg.n; i++) {
        MOP_TRY(gguf_array_str(&mg, i, &s, &len));
        /* "left right": the first space after the first byte separates them */
        const char *sp_at = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp_at)
            return mop_fail(MOP_E_FORMAT, "tokenizer.ggml.merges[%llu] \"%.*s\" is not \"a b\"",
                            (unsigned long long)i, (int)MOP_MIN(len, 64), s);
        (*merges)[2 * i] = (mop_tok_str){s, (size_t)(sp_at - s)};
        (*merges)[2 * i + 1] = (mop_tok_str){sp_at + 1, len - (size_t)(sp_at - s) - 1};
    }
    sp->merges = *merges;

    MOP_TRY(gguf_id(g, "tokenizer.ggml.bos_token_id", &sp->bos));
    MOP_TRY(gguf_id(g, "tokenizer.ggml.eos_token_id", &sp->eos));
    MOP_TRY(gguf_id(g, "tokenizer.ggml.eot_token_id", &sp->eot));
    MOP_TRY(gguf_id(g, "tokenizer.ggml.padding_token_id", &sp->pad));
    /* more ids that end generation when the file names them */
    static const char *const eog_keys[] = {
        "tokenizer.ggml.eom_token_id", "tokenizer.ggml.fim_pad_token_id",
        "tokenizer.ggml.fim_rep_token_id", "tokenizer.ggml.fim_sep_token_id"};
    for (size_t i = 0; i < sizeof eog_keys / sizeof eog_keys[0]; i++) {
        int32_t id = -1;
        MOP_TRY(gguf_id(g, eog_keys[i], &id));
        if (id >= 0)
            sp->eog_extra[sp->n_eog_extra++] = id;
    }
    MOP_TRY(gguf_id(g, "tokenizer.ggml.unknown_token_id", &sp->unk));
    int add_bos = 0;
    MOP_TRY(gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos, &found));
    sp->add_bos = found && add_bos;
    MOP_TRY(gguf_get_str(g, "tokenizer.chat_template", &s, &len, &found));
    if (found)
        sp->chat_template = (mop_tok_str){s, len};
    return MOP_OK;
}

mop_status mop_tokenizer_from_gguf(const gguf_file *g, mop_tokenizer **out)
{
    MOP_CHECK_ARG(g && out);
    mop_tokenizer_spec sp = {.bos = -1, .eos = -1, .eot = -1, .pad = -1, .unk = -1};
    mop_tok_str *tokens = NULL, *merges = NULL;
    int32_t *types = NULL;
    mop_status st = gguf_fill(g, &sp, &tokens, &types, &merges);
    if (st == MOP_OK)
        st = mop_tokenizer_create(&sp, out);
    mop_free(tokens);
    mop_free(types);
    mop_free(merges);
    return st;
}

/* ---- Hugging Face tokenizer.json --------------------------------------------- */
static const char LLAMA3_SPLIT[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int json_is_type(const cJSON *o, const char *type)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) && strcmp(t->valuestring, type) == 0;
}

static int json_flag(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* ByteLevel usable as the whole byte-level step: no prefix space. */
static int byte_level_ok(const cJSON *o, int use_regex)
{
    return json_is_type(o, "ByteLevel") && !json_flag(o, "add_prefix_space", 0) &&
           json_flag(o, "use_regex", 1) == use_regex;
}

/* Which libmop pre-tokenizer the tokenizer.json pre_tokenizer amounts to. */
static mop_status hf_pre(const cJSON *pre, const char **name)
{
    if (byte_level_ok(pre, 1)) {
        *name = "gpt2";
        return MOP_OK;
    }
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    if (json_is_type(pre, "Sequence") && cJSON_GetArraySize(seq) == 2) {
        const cJSON *a = cJSON_GetArrayItem(seq, 0), *b = cJSON_GetArrayItem(seq, 1);
        if (json_is_type(a, "Digits") && json_flag(a, "individual_digits", 0) &&
            byte_level_ok(b, 1)) {
            *name = "smollm";
            return MOP_OK;
        }
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(a, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        if (json_is_type(a, "Split") && cJSON_IsString(re) &&
            strcmp(re->valuestring, LLAMA3_SPLIT) == 0 && byte_level_ok(b, 0)) {
            *name = "llama-bpe";
            return MOP_OK;
        }
    }
    return mop_fail(MOP_E_UNSUPPORTED, "tokenizer.json: pre_tokenizer not supported (ByteLevel, "
                                       "Digits+ByteLevel or the Llama 3 Split+ByteLevel)");
}

/* A token given as "text" or {"content": "text"} in tokenizer_config.json. */
static const char *config_token(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int32_t vocab_find(const mop_tokenizer_spec *sp, const char *s)
{
    if (!s)
        return -1;
    size_t len = strlen(s);
    for (int32_t i = 0; i < sp->n_tokens; i++)
        if (sp->tokens[i].len == len && sp->tokens[i].s && memcmp(sp->tokens[i].s, s, len) == 0)
            return i;
    return -1;
}

typedef struct hf_state {
    cJSON *json, *cfg;
    char *text, *cfg_text;
    mop_tok_str *tokens, *merges;
    int32_t *types;
} hf_state;

static mop_status hf_fill(hf_state *h, const char *dir, mop_tokenizer_spec *sp)
{
    char path[4096];
    size_t size;
    if (snprintf(path, sizeof path, "%s/tokenizer.json", dir) >= (int)sizeof path)
        return mop_fail(MOP_E_INVALID_ARG, "tokenizer directory path too long");
    MOP_TRY(mop_read_file(path, (size_t)1 << 30, &h->text, &size));
    h->json = cJSON_ParseWithLength(h->text, size);
    if (!h->json)
        return mop_fail(MOP_E_FORMAT, "%s: not valid JSON", path);

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(h->json, "model");
    if (!json_is_type(model, "BPE"))
        return mop_fail(MOP_E_UNSUPPORTED, "%s: model.type is not \"BPE\"", path);
    if (json_flag(model, "byte_fallback", 0))
        return mop_fail(MOP_E_UNSUPPORTED, "%s: BPE with byte_fallback is not byte-level BPE", path);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(h->json, "normalizer");
    if (norm && !cJSON_IsNull(norm))
        return mop_fail(MOP_E_UNSUPPORTED, "%s: normalizers are not supported", path);
    const char *pre = NULL;
    MOP_TRY(hf_pre(cJSON_GetObjectItemCaseSensitive(h->json, "pre_tokenizer"), &pre));
    sp->pre = (mop_tok_str){pre, strlen(pre)};

    /* ids: model.vocab plus added_tokens, which must cover 0..n-1 */
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(h->json, "added_tokens");
    if (!cJSON_IsObject(vocab))
        return mop_fail(MOP_E_FORMAT, "%s: model.vocab is not an object", path);
    int64_t n = 0, n_entries = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= INT32_MAX)
            return mop_fail(MOP_E_FORMAT, "%s: vocab entry \"%.64s\" has no valid id", path,
                            it->string);
        n = MOP_MAX(n, (int64_t)it->valuedouble + 1);
        n_entries++;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= INT32_MAX ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(it, "content")))
            return mop_fail(MOP_E_FORMAT, "%s: an added token lacks a valid id or content", path);
        n = MOP_MAX(n, (int64_t)id->valuedouble + 1);
        n_entries++;
    }
    /* Ids must cover 0..n-1, so n entries at least: checking that before
     * allocating keeps one huge id in a small file from costing n * 20 bytes. */
    if (n > n_entries)
        return mop_fail(MOP_E_FORMAT, "%s: largest token id is %lld but there are only %lld "
                        "vocab and added-token entries (ids must cover 0..n-1)", path,
                        (long long)(n - 1), (long long)n_entries);
    h->tokens = mop_calloc((size_t)MOP_MAX(n, 1), sizeof *h->tokens);
    h->types = mop_alloc((size_t)MOP_MAX(n, 1) * sizeof *h->types);
    if (!h->tokens || !h->types)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory for %lld tokens", path, (long long)n);
    for (int64_t i = 0; i < n; i++)
        h->types[i] = MOP_TOKTYPE_NORMAL;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        h->tokens[id] = (mop_tok_str){it->string, strlen(it->string)};
    }
    cJSON_ArrayForEach(it, added) {
        int32_t id = (int32_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
        const char *c = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        h->tokens[id] = (mop_tok_str){c, strlen(c)};
        h->types[id] = json_flag(it, "special", 0) ? MOP_TOKTYPE_CONTROL : MOP_TOKTYPE_USER_DEFINED;
    }
    for (int64_t i = 0; i < n; i++)
        if (!h->tokens[i].s)
            return mop_fail(MOP_E_FORMAT, "%s: no token has id %lld", path, (long long)i);
    sp->n_tokens = (int32_t)n;
    sp->tokens = h->tokens;
    sp->token_types = h->types;

    /* merges: "a b" strings or ["a", "b"] pairs */
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    int nm = cJSON_GetArraySize(merges);
    h->merges = mop_alloc((size_t)MOP_MAX(2 * nm, 1) * sizeof *h->merges);
    if (!h->merges)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory for %d merges", path, nm);
    int r = 0;
    cJSON_ArrayForEach(it, merges) {
        mop_tok_str *m = &h->merges[2 * r];
        if (cJSON_IsString(it)) {
            const char *s = it->valuestring, *sp_at = s[0] ? strchr(s + 1, ' ') : NULL;
            if (!sp_at)
                return mop_fail(MOP_E_FORMAT, "%s: merge %d \"%.64s\" is not \"a b\"", path, r, s);
            m[0] = (mop_tok_str){s, (size_t)(sp_at - s)};
            m[1] = (mop_tok_str){sp_at + 1, strlen(sp_at + 1)};
        } else if (cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            const char *a = cJSON_GetArrayItem(it, 0)->valuestring;
            const char *b = cJSON_GetArrayItem(it, 1)->valuestring;
            m[0] = (mop_tok_str){a, strlen(a)};
            m[1] = (mop_tok_str){b, strlen(b)};
        } else {
            return mop_fail(MOP_E_FORMAT, "%s: merge %d is neither \"a b\" nor [a, b]", path, r);
        }
        r++;
    }
    sp->n_merges = r;
    sp->merges = h->merges;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    sp->unk = cJSON_IsString(unk) ? vocab_find(sp, unk->valuestring) : -1;
    if (sp->unk >= 0) /* HF emits model.unk_token for bytes without a token */
        h->types[sp->unk] = MOP_TOKTYPE_UNKNOWN;

    /* tokenizer_config.json: chat template and special tokens, if present */
    if (snprintf(path, sizeof path, "%s/tokenizer_config.json", dir) >= (int)sizeof path)
        return mop_fail(MOP_E_INVALID_ARG, "tokenizer directory path too long");
    FILE *f = fopen(path, "rb");
    if (!f)
        return MOP_OK;
    fclose(f);
    MOP_TRY(mop_read_file(path, (size_t)1 << 28, &h->cfg_text, &size));
    h->cfg = cJSON_ParseWithLength(h->cfg_text, size);
    if (!h->cfg)
        return mop_fail(MOP_E_FORMAT, "%s: not valid JSON", path);
    sp->bos = vocab_find(sp, config_token(h->cfg, "bos_token"));
    sp->eos = vocab_find(sp, config_token(h->cfg, "eos_token"));
    sp->pad = vocab_find(sp, config_token(h->cfg, "pad_token"));
    sp->add_bos = json_flag(h->cfg, "add_bos_token", 0);
    const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(h->cfg, "chat_template");
    if (cJSON_IsArray(tpl)) { /* [{"name": ..., "template": ...}]: take "default" */
        const cJSON *pick = NULL;
        cJSON_ArrayForEach(it, tpl) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
            if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0)
                pick = cJSON_GetObjectItemCaseSensitive(it, "template");
        }
        tpl = pick;
    }
    if (cJSON_IsString(tpl))
        sp->chat_template = (mop_tok_str){tpl->valuestring, strlen(tpl->valuestring)};
    return MOP_OK;
}

mop_status mop_tokenizer_from_hf_dir(const char *dir, mop_tokenizer **out)
{
    MOP_CHECK_ARG(dir && out);
    mop_tokenizer_spec sp = {.bos = -1, .eos = -1, .eot = -1, .pad = -1, .unk = -1};
    hf_state h = {0};
    mop_status st = hf_fill(&h, dir, &sp);
    if (st == MOP_OK)
        st = mop_tokenizer_create(&sp, out);
    cJSON_Delete(h.json);
    cJSON_Delete(h.cfg);
    mop_free(h.text);
    mop_free(h.cfg_text);
    mop_free(h.tokens);
    mop_free(h.types);
    mop_free(h.merges);
    return st;
}
