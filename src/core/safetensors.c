/* Hugging Face checkpoints: safetensors files (single or sharded through
 * model.safetensors.index.json) plus config.json, loaded as a Llama model.
 * JSON is parsed with cJSON; everything cJSON allocates is freed with
 * cJSON_Delete (its process-wide hooks are left alone). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "byte_order.h"
#include "fileio.h"
#include "loaders.h"
#include "safetensors.h"
#include "tokenizer.h"

/* ---- safetensors header -------------------------------------------------- */

static const struct {
    const char *name;
    uint32_t size;  /* bytes per element */
    int32_t ftype;  /* mop_ftype or -1 */
} st_dtypes[] = {
    {"F32", 4, MOP_FT_F32},  {"F16", 2, MOP_FT_F16}, {"BF16", 2, MOP_FT_BF16},
    {"F64", 8, -1},          {"I64", 8, -1},         {"U64", 8, -1},
    {"I32", 4, -1},          {"U32", 4, -1},         {"I16", 2, -1},
    {"U16", 2, -1},          {"I8", 1, -1},          {"U8", 1, -1},
    {"BOOL", 1, -1},         {"F8_E4M3", 1, -1},     {"F8_E5M2", 1, -1},
};

/* JSON numbers are doubles: integers are exact up to 2^53. */
#define ST_JSON_INT_MAX 9007199254740992.0

/* A JSON number holding an integer in [0, max]. */
static int json_uint(const cJSON *v, double max, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double x = v->valuedouble;
    if (!isfinite(x) || x < 0 || x > max || x != floor(x))
        return 0;
    *out = (uint64_t)x;
    return 1;
}

/* "[2, 3]" for messages. */
static void format_dims(char *buf, size_t cap, const int64_t *dims, int32_t n)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int32_t i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)dims[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_tensor_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

void safetensors_free(st_file *f)
{
    if (!f)
        return;
    for (int64_t i = 0; i < f->n_tensors; i++)
        mop_free(f->tensors[i].name);
    mop_free(f->tensors);
    mop_free(f);
}

static mop_status parse_metadata(const cJSON *meta, const char *what)
{
    if (!cJSON_IsObject(meta))
        return mop_fail(MOP_E_FORMAT, "%s: __metadata__ is not an object", what);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta) {
        if (!cJSON_IsString(kv))
            return mop_fail(MOP_E_FORMAT, "%s: __metadata__ value \"%s\" is not a string", what,
                            kv->string ? kv->string : "");
    }
    return MOP_OK;
}

/* One header entry into t (name already set). data_size bounds the offsets. */
static mop_status parse_entry(st_tensor *t, const cJSON *e, const uint8_t *base,
                              uint64_t data_size, const char *what)
{
    const char *name = t->name;
    if (!cJSON_IsObject(e))
        return mop_fail(MOP_E_FORMAT, "%s: tensor %s: entry is not an object", what, name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dtype))
        return mop_fail(MOP_E_FORMAT, "%s: tensor %s: missing or non-string \"dtype\"", what,
                        name);
    if (!cJSON_IsArray(shape))
        return mop_fail(MOP_E_FORMAT, "%s: tensor %s: missing or non-array \"shape\"", what,
                        name);
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return mop_fail(MOP_E_FORMAT, "%s: tensor %s: \"data_offsets\" is not [begin, end]",
                        what, name);

    uint32_t esize = 0;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++) {
        if (strcmp(dtype->valuestring, st_dtypes[i].name) == 0) {
            t->dtype = st_dtypes[i].name;
            t->ftype = st_dtypes[i].ftype;
            esize = st_dtypes[i].size;
        }
    }
    if (!esize)
        return mop_fail(MOP_E_UNSUPPORTED, "%s: tensor %s: unknown dtype \"%.32s\"", what, name,
                        dtype->valuestring);

    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > ST_MAX_DIMS)
        return mop_fail(MOP_E_UNSUPPORTED, "%s: tensor %s: %d dimensions (at most %d)", what,
                        name, n_dims, ST_MAX_DIMS);
    t->n_dims = n_dims;
    uint64_t n_elem = 1;
    int k = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape) {
        uint64_t v;
        if (!json_uint(d, ST_JSON_INT_MAX, &v))
            return mop_fail(MOP_E_FORMAT,
                            "%s: tensor %s: shape entry %d is not a non-negative integer", what,
                            name, k);
        t->dims[k++] = (int64_t)v;
        if (__builtin_mul_overflow(n_elem, v, &n_elem))
            return mop_fail(MOP_E_SHAPE, "%s: tensor %s: element count overflows", what, name);
    }

    if (!json_uint(cJSON_GetArrayItem(offs, 0), ST_JSON_INT_MAX, &t->begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), ST_JSON_INT_MAX, &t->end))
        return mop_fail(MOP_E_FORMAT,
                        "%s: tensor %s: data_offsets are not non-negative integers", what, name);
    if (t->begin > t->end)
        return mop_fail(MOP_E_FORMAT, "%s: tensor %s: data_offsets [%llu, %llu) run backwards",
                        what, name, (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > data_size)
        return mop_fail(MOP_E_FORMAT,
                        "%s: tensor %s: data_offsets [%llu, %llu) beyond the data buffer of "
                        "%llu bytes (file truncated?)",
                        what, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                        (unsigned long long)data_size);
    uint64_t nbytes;
    if (__builtin_mul_overflow(n_elem, (uint64_t)esize, &nbytes) || nbytes != t->end - t->begin) {
        char dims[160];
        format_dims(dims, sizeof dims, t->dims, t->n_dims);
        return mop_fail(MOP_E_SHAPE,
                        "%s: tensor %s: shape %s of %s needs %llu bytes but data_offsets "
                        "[%llu, %llu) hold %llu",
                        what, name, dims, t->dtype, (unsigned long long)n_elem * esize,
                        (unsigned long long)t->begin, (unsigned long long)t->end,
                        (unsigned long long)(t->end - t->begin));
    }
    t->data = base + t->begin;
    return MOP_OK;
}

static mop_status parse_header(st_file *f, const cJSON *root, const uint8_t *base,
                               const char *what)
{
    if (!cJSON_IsObject(root))
        return mop_fail(MOP_E_FORMAT, "%s: header is not a JSON object", what);
    int64_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (!e->string)
            return mop_fail(MOP_E_FORMAT, "%s: header entry without a name", what);
        if (strcmp(e->string, "__metadata__") != 0)
            n++;
    }
    f->tensors = mop_calloc((size_t)(n ? n : 1), sizeof *f->tensors);
    if (!f->tensors)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory for %lld tensors", what, (long long)n);

    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            MOP_TRY(parse_metadata(e, what));
            continue;
        }
        st_tensor *t = &f->tensors[f->n_tensors];
        t->name = mop_strdup(e->string);
        if (!t->name)
            return mop_fail(MOP_E_NOMEM, "%s: out of memory", what);
        f->n_tensors++;
        MOP_TRY(parse_entry(t, e, base, f->data_size, what));
    }

    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    for (int64_t i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return mop_fail(MOP_E_FORMAT, "%s: tensor %s appears twice in the header", what,
                            f->tensors[i].name);

    /* Overlaps: sort the non-empty tensors by start; each must end before the next. */
    const st_tensor **order = mop_calloc((size_t)(n ? n : 1), sizeof *order);
    if (!order)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", what);
    size_t m = 0;
    for (int64_t i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].end > f->tensors[i].begin)
            order[m++] = &f->tensors[i];
    qsort(order, m, sizeof *order, cmp_tensor_begin);
    mop_status st = MOP_OK;
    for (size_t i = 1; i < m && st == MOP_OK; i++)
        if (order[i]->begin < order[i - 1]->end)
            st = mop_fail(MOP_E_FORMAT,
                          "%s: tensors %s [%llu, %llu) and %s [%llu, %llu) overlap", what,
                          order[i - 1]->name, (unsigned long long)order[i - 1]->begin,
                          (unsigned long long)order[i - 1]->end, order[i]->name,
                          (unsigned long long)order[i]->begin,
                          (unsigned long long)order[i]->end);
    mop_free(order);
    return st;
}

mop_status safetensors_parse(const void *data, size_t size, const char *what, st_file **out)
{
    MOP_CHECK_ARG((data || size == 0) && out);
    if (!what)
        what = "safetensors";
    const uint8_t *b = data;
    if (size < 8)
        return mop_fail(MOP_E_FORMAT, "%s: %zu bytes, too short for the 8-byte header length",
                        what, size);
    uint64_t n = mop_get_le64(b);
    if (n > size - 8)
        return mop_fail(MOP_E_FORMAT, "%s: header length %llu beyond the file's %zu bytes", what,
                        (unsigned long long)n, size);
    if (n > ST_MAX_HEADER)
        return mop_fail(MOP_E_FORMAT, "%s: header length %llu above the limit of %llu bytes",
                        what, (unsigned long long)n, (unsigned long long)ST_MAX_HEADER);
    if (n < 2 || b[8] != '{')
        return mop_fail(MOP_E_FORMAT, "%s: header does not start with a JSON object", what);

    /* cJSON gets its own NUL-terminated copy: it never reads past the header. */
    char *text = mop_alloc((size_t)n + 1);
    if (!text)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory for a %llu-byte header", what,
                        (unsigned long long)n);
    memcpy(text, b + 8, (size_t)n);
    text[n] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, (size_t)n, &end, 0);
    mop_status st = MOP_OK;
    if (!root) {
        st = mop_fail(MOP_E_FORMAT, "%s: header is not valid JSON (error near byte %lld of %llu)",
                      what, end ? (long long)(end - text) : -1LL, (unsigned long long)n);
    } else {
        /* Writers may pad the header with spaces to align the data. */
        for (const char *p = end; p < text + n && st == MOP_OK; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
                st = mop_fail(MOP_E_FORMAT, "%s: bytes after the header's JSON object (byte %lld)",
                              what, (long long)(p - text));
    }
    mop_free(text);

    st_file *f = NULL;
    if (st == MOP_OK) {
        f = mop_calloc(1, sizeof *f);
        if (!f)
            st = mop_fail(MOP_E_NOMEM, "%s: out of memory", what);
    }
    if (st == MOP_OK) {
        f->header_len = n;
        f->data_size = size - 8 - n;
        st = parse_header(f, root, b + 8 + n, what);
    }
    cJSON_Delete(root);
    if (st != MOP_OK) {
        safetensors_free(f);
        return st;
    }
    *out = f;
    return MOP_OK;
}

const st_tensor *safetensors_find(const st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
}

/* ---- config.json --------------------------------------------------------- */

/* An integer field in [lo, hi]; absent or null -> def (or an error if required). */
static mop_status cfg_int(const cJSON *root, const char *key, int required, int64_t def,
                          int64_t lo, int64_t hi, const char *what, int32_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return mop_fail(MOP_E_FORMAT, "%s: missing \"%s\"", what, key);
        *out = (int32_t)def;
        return MOP_OK;
    }
    uint64_t u;
    if (!json_uint(v, ST_JSON_INT_MAX, &u) || (int64_t)u < lo || (int64_t)u > hi)
        return mop_fail(MOP_E_FORMAT, "%s: \"%s\" must be an integer in [%lld, %lld]", what, key,
                        (long long)lo, (long long)hi);
    *out = (int32_t)u;
    return MOP_OK;
}

/* A positive finite number; absent or null -> def (or an error if required). */
static mop_status cfg_float(const cJSON *root, const char *key, int required, double def,
                            const char *what, float *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return mop_fail(MOP_E_FORMAT, "%s: missing \"%s\"", what, key);
        *out = (float)def;
        return MOP_OK;
    }
    /* Positive and finite also once rounded to float (1e-85 would become 0). */
    float f = cJSON_IsNumber(v) ? (float)v->valuedouble : 0.0f;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || !isfinite(f) || !(f > 0))
        return mop_fail(MOP_E_FORMAT, "%s: \"%s\" must be a positive number within float range",
                        what, key);
    *out = f;
    return MOP_OK;
}

static int is_llama(const cJSON *root)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (cJSON_IsString(mt) && strcmp(mt->valuestring, "llama") == 0)
        return 1;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures"), *a;
    if (!cJSON_IsArray(archs))
        return 0;
    cJSON_ArrayForEach(a, archs) {
        if (cJSON_IsString(a) && strcmp(a->valuestring, "LlamaForCausalLM") == 0)
            return 1;
    }
    return 0;
}

static mop_status parse_rope_scaling(const cJSON *root, mop_hparams *hp, const char *what)
{
    hp->rope_scaling = MOP_ROPE_SCALING_NONE;
    hp->rope_factor = 1.0f;
    hp->rope_low_freq_factor = hp->rope_high_freq_factor = 0.0f;
    hp->rope_orig_ctx = 0;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rs || cJSON_IsNull(rs))
        return MOP_OK;
    if (!cJSON_IsObject(rs))
        return mop_fail(MOP_E_FORMAT, "%s: \"rope_scaling\" is not an object", what);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!type)
        type = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsString(type))
        return mop_fail(MOP_E_FORMAT, "%s: rope_scaling has no string \"rope_type\"/\"type\"",
                        what);
    const char *t = type->valuestring;
    if (strcmp(t, "default") == 0)
        return MOP_OK;
    if (strcmp(t, "linear") == 0) {
        hp->rope_scaling = MOP_ROPE_SCALING_LINEAR;
        MOP_TRY(cfg_float(rs, "factor", 1, 1.0, what, &hp->rope_factor));
        return MOP_OK;
    }
    if (strcmp(t, "llama3") == 0) {
        hp->rope_scaling = MOP_ROPE_SCALING_LLAMA3;
        MOP_TRY(cfg_float(rs, "factor", 1, 1.0, what, &hp->rope_factor));
        MOP_TRY(cfg_float(rs, "low_freq_factor", 1, 1.0, what, &hp->rope_low_freq_factor));
        MOP_TRY(cfg_float(rs, "high_freq_factor", 1, 1.0, what, &hp->rope_high_freq_factor));
        MOP_TRY(cfg_int(rs, "original_max_position_embeddings", 1, 0, 1, INT32_MAX, what,
                        &hp->rope_orig_ctx));
        if (hp->rope_high_freq_factor <= hp->rope_low_freq_factor)
            return mop_fail(MOP_E_FORMAT,
                            "%s: rope_scaling high_freq_factor %g must exceed low_freq_factor %g",
                            what, (double)hp->rope_high_freq_factor,
                            (double)hp->rope_low_freq_factor);
        return MOP_OK;
    }
    return mop_fail(MOP_E_UNSUPPORTED,
                    "%s: rope_scaling type \"%.64s\" not supported (linear, llama3)", what, t);
}

static mop_status config_fields(const cJSON *root, const char *what, mop_hparams *hp, char *name,
                                size_t name_cap)
{
    if (!cJSON_IsObject(root))
        return mop_fail(MOP_E_FORMAT, "%s: not a JSON object", what);
    if (!is_llama(root)) {
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
        const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
        const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
        return mop_fail(MOP_E_UNSUPPORTED,
                        "%s: model_type \"%.64s\" (architectures \"%.64s\") is not supported; "
                        "libmop loads Llama models (model_type \"llama\" or LlamaForCausalLM)",
                        what, cJSON_IsString(mt) ? mt->valuestring : "",
                        cJSON_IsString(a0) ? a0->valuestring : "");
    }
    memset(hp, 0, sizeof *hp);
    const int32_t big = 1 << 24;
    MOP_TRY(cfg_int(root, "num_hidden_layers", 1, 0, 1, 4096, what, &hp->n_layer));
    MOP_TRY(cfg_int(root, "hidden_size", 1, 0, 1, big, what, &hp->n_embd));
    MOP_TRY(cfg_int(root, "intermediate_size", 1, 0, 1, big, what, &hp->n_ff));
    MOP_TRY(cfg_int(root, "num_attention_heads", 1, 0, 1, 65536, what, &hp->n_head));
    MOP_TRY(cfg_int(root, "num_key_value_heads", 0, hp->n_head, 1, 65536, what, &hp->n_head_kv));
    MOP_TRY(cfg_int(root, "vocab_size", 1, 0, 1, INT32_MAX, what, &hp->n_vocab));
    MOP_TRY(cfg_int(root, "max_position_embeddings", 0, 2048, 1, INT32_MAX, what,
                    &hp->n_ctx_train));
    if (hp->n_embd % hp->n_head != 0 &&
        !cJSON_GetObjectItemCaseSensitive(root, "head_dim"))
        return mop_fail(MOP_E_SHAPE, "%s: hidden_size %d is not a multiple of "
                        "num_attention_heads %d and head_dim is not given",
                        what, hp->n_embd, hp->n_head);
    MOP_TRY(cfg_int(root, "head_dim", 0, hp->n_embd / hp->n_head, 1, big, what, &hp->head_dim));
    if (hp->head_dim % 2 != 0)
        return mop_fail(MOP_E_SHAPE, "%s: head_dim %d is odd (RoPE rotates pairs)", what,
                        hp->head_dim);
    if (hp->n_head_kv > hp->n_head || hp->n_head % hp->n_head_kv != 0)
        return mop_fail(MOP_E_SHAPE,
                        "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                        what, hp->n_head, hp->n_head_kv);
    hp->n_rot = hp->head_dim;
    MOP_TRY(cfg_float(root, "rms_norm_eps", 0, 1e-6, what, &hp->norm_eps));
    MOP_TRY(cfg_float(root, "rope_theta", 0, 10000.0, what, &hp->rope_theta));

    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    if (tie && !cJSON_IsNull(tie) && !cJSON_IsBool(tie))
        return mop_fail(MOP_E_FORMAT, "%s: \"tie_word_embeddings\" is not a boolean", what);
    hp->tied_embeddings = cJSON_IsTrue(tie) ? 1 : 0;

    /* Variants the Llama forward in libmop does not compute. */
    const char *flags[] = {"attention_bias", "mlp_bias"};
    for (size_t i = 0; i < 2; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, flags[i])))
            return mop_fail(MOP_E_UNSUPPORTED, "%s: \"%s\": true is not supported", what,
                            flags[i]);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !cJSON_IsNull(act) &&
        !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0))
        return mop_fail(MOP_E_UNSUPPORTED, "%s: hidden_act \"%.32s\" not supported (silu)", what,
                        cJSON_IsString(act) ? act->valuestring : "?");
    MOP_TRY(parse_rope_scaling(root, hp, what));

    if (name && name_cap) {
        name[0] = '\0';
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(root, "_name_or_path");
        if (cJSON_IsString(nm))
            snprintf(name, name_cap, "%s", nm->valuestring);
    }
    return MOP_OK;
}

mop_status safetensors_parse_config(const char *json, size_t len, const char *what,
                                    mop_hparams *hp, char *name, size_t name_cap)
{
    MOP_CHECK_ARG((json || len == 0) && hp);
    if (!what)
        what = "config.json";
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json ? json : "", len, &end, 0);
    if (!root)
        return mop_fail(MOP_E_FORMAT, "%s: invalid JSON (error near byte %lld)", what,
                        end && json ? (long long)(end - json) : -1LL);
    mop_status st = config_fields(root, what, hp, name, name_cap);
    cJSON_Delete(root);
    return st;
}

/* ---- tensor names -------------------------------------------------------- */

int safetensors_map_name(const char *hf, int32_t n_layer, char *buf, size_t cap)
{
    static const struct { const char *hf, *gguf; } global[] = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
    };
    static const struct { const char *hf, *gguf; } layer[] = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
    };
    for (size_t i = 0; i < sizeof global / sizeof global[0]; i++)
        if (strcmp(hf, global[i].hf) == 0)
            return snprintf(buf, cap, "%s", global[i].gguf) < (int)cap ? 1 : 0;

    const char *prefix = "model.layers.";
    size_t np = strlen(prefix);
    if (strncmp(hf, prefix, np) != 0)
        return 0;
    const char *p = hf + np;
    /* Decimal layer index without sign or leading zeros. */
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return 0;
    long idx = 0;
    while (*p >= '0' && *p <= '9') {
        idx = idx * 10 + (*p++ - '0');
        if (idx > INT32_MAX)
            return 0;
    }
    if (*p++ != '.')
        return 0;
    for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
        if (strcmp(p, layer[i].hf) == 0) {
            if (idx >= n_layer)
                return -1;
            return snprintf(buf, cap, "blk.%ld.%s", idx, layer[i].gguf) < (int)cap ? 1 : 0;
        }
    }
    return 0;
}

/* ---- the loader ---------------------------------------------------------- */

#define ST_MAX_JSON_FILE ((size_t)64 << 20)

/* Everything one load allocates; released by load_state_free. */
typedef struct st_load {
    char *dir;
    char **files;          /* paths of the safetensors files */
    int32_t n_files;
    st_file **parsed;      /* per file */
    cJSON *weight_map;     /* sharded: the index's weight_map (owned via index_root) */
    cJSON *index_root;
    mop_src_tensor *src;
    int64_t n_src;
} st_load;

static void load_state_free(st_load *L)
{
    for (int32_t i = 0; i < L->n_files; i++) {
        mop_free(L->files[i]);
        if (L->parsed)
            safetensors_free(L->parsed[i]);
    }
    mop_free(L->files);
    mop_free(L->parsed);
    for (int64_t i = 0; i < L->n_src; i++)
        mop_free((char *)L->src[i].name);
    mop_free(L->src);
    cJSON_Delete(L->index_root);
    mop_free(L->dir);
}

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = mop_alloc(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, name, b + 1);
    }
    return p;
}

static int is_file(const char *path)
{
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static mop_status add_file(st_load *L, const char *name)
{
    for (int32_t i = 0; i < L->n_files; i++) {
        const char *base = strrchr(L->files[i], '/');
        if (strcmp(base ? base + 1 : L->files[i], name) == 0)
            return MOP_OK;
    }
    char **grown = mop_calloc((size_t)L->n_files + 1, sizeof *grown);
    if (!grown)
        return mop_fail(MOP_E_NOMEM, "out of memory");
    if (L->n_files)
        memcpy(grown, L->files, (size_t)L->n_files * sizeof *grown);
    grown[L->n_files] = path_join(L->dir, name);
    if (!grown[L->n_files]) {
        mop_free(grown);
        return mop_fail(MOP_E_NOMEM, "out of memory");
    }
    mop_free(L->files);
    L->files = grown;
    L->n_files++;
    return MOP_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A directory without model.safetensors or an index: every *.safetensors in it. */
static mop_status scan_dir(st_load *L)
{
    DIR *d = opendir(L->dir);
    if (!d)
        return mop_fail(MOP_E_IO, "%s: cannot open directory", L->dir);
    mop_status st = MOP_OK;
    struct dirent *e;
    while (st == MOP_OK && (e = readdir(d)) != NULL)
        if (ends_with(e->d_name, ".safetensors") && e->d_name[0] != '.')
            st = add_file(L, e->d_name);
    closedir(d);
    MOP_TRY(st);
    if (L->n_files == 0)
        return mop_fail(MOP_E_IO,
                        "%s: no model.safetensors, model.safetensors.index.json or "
                        "*.safetensors file",
                        L->dir);
    qsort(L->files, (size_t)L->n_files, sizeof *L->files, cmp_str);
    return MOP_OK;
}

static mop_status read_index(st_load *L, const char *index_path)
{
    char *text = NULL;
    size_t len = 0;
    MOP_TRY(mop_read_file(index_path, ST_MAX_JSON_FILE, &text, &len));
    L->index_root = cJSON_ParseWithLength(text, len);
    mop_free(text);
    if (!L->index_root)
        return mop_fail(MOP_E_FORMAT, "%s: invalid JSON", index_path);
    L->weight_map = cJSON_GetObjectItemCaseSensitive(L->index_root, "weight_map");
    if (!cJSON_IsObject(L->weight_map))
        return mop_fail(MOP_E_FORMAT, "%s: no \"weight_map\" object", index_path);
    const cJSON *e;
    cJSON_ArrayForEach(e, L->weight_map) {
        if (!cJSON_IsString(e) || !e->valuestring[0])
            return mop_fail(MOP_E_FORMAT, "%s: weight_map entry %s is not a file name",
                            index_path, e->string ? e->string : "?");
        /* Shards live beside the index: no paths out of the directory. */
        if (strchr(e->valuestring, '/') || strcmp(e->valuestring, "..") == 0 ||
            strcmp(e->valuestring, ".") == 0)
            return mop_fail(MOP_E_FORMAT, "%s: weight_map entry %s: file \"%.128s\" is not a "
                            "plain file name", index_path, e->string, e->valuestring);
        MOP_TRY(add_file(L, e->valuestring));
    }
    if (L->n_files == 0)
        return mop_fail(MOP_E_FORMAT, "%s: weight_map is empty", index_path);
    return MOP_OK;
}

/* Resolve `path` into a directory and a list of safetensors files. */
static mop_status find_files(st_load *L, const char *path)
{
    struct stat s;
    if (stat(path, &s) != 0)
        return mop_fail(MOP_E_IO, "%s: no such file or directory", path);
    if (S_ISDIR(s.st_mode)) {
        L->dir = mop_strdup(path);
        if (!L->dir)
            return mop_fail(MOP_E_NOMEM, "out of memory");
        char *index = path_join(path, "model.safetensors.index.json");
        char *single = path_join(path, "model.safetensors");
        mop_status st = (!index || !single) ? mop_fail(MOP_E_NOMEM, "out of memory")
                        : is_file(index)    ? read_index(L, index)
                        : is_file(single)   ? add_file(L, "model.safetensors")
                                            : scan_dir(L);
        mop_free(index);
        mop_free(single);
        return st;
    }
    const char *slash = strrchr(path, '/');
    if (!slash)
        L->dir = mop_strdup(".");
    else if (slash == path)
        L->dir = mop_strdup("/");
    else if ((L->dir = mop_alloc((size_t)(slash - path) + 1)) != NULL) {
        memcpy(L->dir, path, (size_t)(slash - path));
        L->dir[slash - path] = '\0';
    }
    if (!L->dir)
        return mop_fail(MOP_E_NOMEM, "out of memory");
    if (ends_with(path, ".index.json"))
        return read_index(L, path);
    return add_file(L, slash ? slash + 1 : path);
}

/* The canonical tensors the model uses, from every file. */
static mop_status collect_tensors(st_load *L, const mop_hparams *hp)
{
    int64_t total = 0;
    for (int32_t f = 0; f < L->n_files; f++)
        total += L->parsed[f]->n_tensors;
    L->src = mop_calloc((size_t)(total ? total : 1), sizeof *L->src);
    if (!L->src)
        return mop_fail(MOP_E_NOMEM, "out of memory for %lld tensors", (long long)total);

    for (int32_t f = 0; f < L->n_files; f++) {
        const st_file *sf = L->parsed[f];
        const char *fname = L->files[f];
        for (int64_t i = 0; i < sf->n_tensors; i++) {
            const st_tensor *t = &sf->tensors[i];
            char canon[96];
            int r = safetensors_map_name(t->name, hp->n_layer, canon, sizeof canon);
            if (r == 0 || (r == 1 && hp->tied_embeddings && strcmp(t->name, "lm_head.weight") == 0)) {
                mop_log(MOP_LOG_DEBUG, "%s: ignoring tensor %s", fname, t->name);
                continue;
            }
            if (r < 0)
                return mop_fail(MOP_E_FORMAT,
                                "%s: tensor %s: layer index beyond num_hidden_layers %d", fname,
                                t->name, hp->n_layer);
            if (t->ftype < 0)
                return mop_fail(MOP_E_UNSUPPORTED,
                                "%s: tensor %s: dtype %s not supported (F32, F16, BF16)", fname,
                                t->name, t->dtype);
            if (t->n_dims < 1 || t->n_dims > 4)
                return mop_fail(MOP_E_SHAPE, "%s: tensor %s: %d dimensions (1 to 4 expected)",
                                fname, t->name, t->n_dims);
            for (int64_t j = 0; j < L->n_src; j++)
                if (strcmp(L->src[j].name, canon) == 0)
                    return mop_fail(MOP_E_FORMAT, "%s: tensor %s is stored a second time",
                                    fname, t->name);
            mop_src_tensor *s = &L->src[L->n_src];
            s->name = mop_strdup(canon);
            if (!s->name)
                return mop_fail(MOP_E_NOMEM, "out of memory");
            L->n_src++;
            s->ftype = t->ftype;
            s->n_dims = t->n_dims;
            for (int32_t d = 0; d < t->n_dims; d++)
                s->dims[d] = t->dims[d];
            s->data = t->data;
            s->nbytes = t->end - t->begin;
            s->file_name = t->name;
        }
    }
    /* The assembler ties a model without an output matrix, which is what a
     * GGUF without one means; an HF config that says untied must have one. */
    if (!hp->tied_embeddings) {
        int found = 0;
        for (int64_t j = 0; j < L->n_src && !found; j++)
            found = strcmp(L->src[j].name, "output.weight") == 0;
        if (!found)
            return mop_fail(MOP_E_FORMAT, "tensor lm_head.weight is missing "
                            "(config.json has tie_word_embeddings false)");
    }
    return MOP_OK;
}

/* Sharded: every tensor the index names must be in the file it names. */
static mop_status check_weight_map(const st_load *L)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, L->weight_map) {
        for (int32_t f = 0; f < L->n_files; f++) {
            const char *base = strrchr(L->files[f], '/') + 1;
            if (strcmp(base, e->valuestring) == 0 && !safetensors_find(L->parsed[f], e->string))
                return mop_fail(MOP_E_FORMAT,
                                "model.safetensors.index.json maps tensor %s to %s, which does "
                                "not contain it",
                                e->string, e->valuestring);
        }
    }
    return MOP_OK;
}

static mop_status load(st_load *L, mop_model *m, const char *path, const mop_model_params *p)
{
    MOP_TRY(find_files(L, path));

    /* config.json first: cheap, and it decides which tensors matter. */
    char *cfg_path = path_join(L->dir, "config.json");
    if (!cfg_path)
        return mop_fail(MOP_E_NOMEM, "out of memory");
    if (!is_file(cfg_path)) {
        mop_status st = mop_fail(MOP_E_IO, "%s: not found (a safetensors model needs its "
                                 "config.json beside the weights)", cfg_path);
        mop_free(cfg_path);
        return st;
    }
    char *cfg = NULL;
    size_t cfg_len = 0;
    mop_status st = mop_read_file(cfg_path, ST_MAX_JSON_FILE, &cfg, &cfg_len);
    mop_hparams hp;
    char name[128];
    if (st == MOP_OK)
        st = safetensors_parse_config(cfg, cfg_len, cfg_path, &hp, name, sizeof name);
    mop_free(cfg);
    mop_free(cfg_path);
    MOP_TRY(st);

    L->parsed = mop_calloc((size_t)L->n_files, sizeof *L->parsed);
    if (!L->parsed)
        return mop_fail(MOP_E_NOMEM, "out of memory");
    uint64_t file_bytes = 0;
    for (int32_t f = 0; f < L->n_files; f++) {
        void *addr = NULL;
        size_t size = 0;
        MOP_TRY(mop_map_file(L->files[f], &addr, &size));
        if (addr && (st = mop_model_add_mapping(m, addr, size)) != MOP_OK) {
            mop_unmap_file(addr, size);
            return st;
        }
        file_bytes += size;
        MOP_TRY(safetensors_parse(addr, size, L->files[f], &L->parsed[f]));
    }
    if (L->weight_map)
        MOP_TRY(check_weight_map(L));
    MOP_TRY(collect_tensors(L, &hp));

    if (!name[0]) {
        const char *base = strrchr(L->dir, '/');
        snprintf(name, sizeof name, "%s", base && base[1] ? base + 1 : L->dir);
    }
    mop_model_source src = {
        .hp = hp,
        .arch = "llama",
        .name = name,
        .file_kind = "safetensors",
        .file_bytes = file_bytes,
        .tensors = L->src,
        .n_tensors = L->n_src,
        .qk_rope_halves = 1,
    };
    /* The tokenizer first, as the GGUF loader does: a tokenizer with more
     * tokens than the model has embeddings is refused before the weights load. */
    char *tok_path = path_join(L->dir, "tokenizer.json");
    if (!tok_path)
        return mop_fail(MOP_E_NOMEM, "out of memory");
    int has_tok = is_file(tok_path);
    mop_free(tok_path);
    if (has_tok) {
        st = mop_tokenizer_from_hf_dir(L->dir, &m->tok);
        if (st != MOP_OK) {
            mop_error_prefix("%s/tokenizer.json", L->dir);
            return st;
        }
        int32_t tok_vocab = mop_tokenizer_n_vocab(m->tok);
        if (tok_vocab > hp.n_vocab)
            return mop_fail(MOP_E_SHAPE, "%s/tokenizer.json: the tokenizer has %d tokens but the "
                            "model only %d embeddings (config.json vocab_size)", L->dir,
                            tok_vocab, hp.n_vocab);
    } else {
        mop_log(MOP_LOG_INFO, "%s: no tokenizer.json; tokenizing is unavailable", L->dir);
    }
    return mop_model_assemble(m, &src, p);
}

mop_status mop_load_safetensors(mop_model *m, const char *path, const mop_model_params *p)
{
    MOP_CHECK_ARG(m && path);
    st_load L = {0};
    mop_status st = load(&L, m, path, p);
    load_state_free(&L);
    return st;
}
