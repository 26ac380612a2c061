/* Save and load a mixture as a safetensors file: F32 tensors in flat-buffer
 * order, the mixture's shape in "__metadata__" (all values strings). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byte_order.h"
#include "fileio.h"
#include "gate.h"
#include "safetensors.h"

#define MIX_FORMAT "libmop.mixture"
#define MIX_VERSION 2 /* 2: gate input statistics, pooling, bias, shared groups, attention */

static const char *const tensor_names[GATE_T_COUNT] = {"experts", "gate.w1", "gate.b1",
                                                       "gate.w2", "gate.b2"};

/* The gate's input statistics follow the flat buffer in the file (learned gate). */
static const char *const stat_names[2] = {"gate.input_mean", "gate.input_std"};

/* ---- save ------------------------------------------------------------------- */

static mop_status write_floats(FILE *f, const float *x, size_t n)
{
    /* F32 little-endian: the buffer as it is on little-endian hosts */
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, &x[i], 4);
        uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
        if (fwrite(b, 1, 4, f) != 4)
            return mop_fail(MOP_E_IO, "mop_mixture_save: write failed");
    }
    return MOP_OK;
}

typedef struct save_job {
    const mop_mixture *m;
    const char *header; /* JSON */
    size_t header_len;  /* padded to a multiple of 8 with spaces */
} save_job;

static mop_status write_mixture(FILE *f, void *user)
{
    const save_job *j = user;
    uint8_t len8[8];
    mop_put_le64(len8, (uint64_t)j->header_len);
    MOP_TRY(mop_fwrite_all(f, len8, 8));
    size_t raw = strlen(j->header);
    MOP_TRY(mop_fwrite_all(f, j->header, raw));
    static const char spaces[8] = "        ";
    MOP_TRY(mop_fwrite_all(f, spaces, j->header_len - raw));
    const mop_mixture *m = j->m;
    MOP_TRY(write_floats(f, m->params, m->n_params));
    if (m->in_mean) {
        MOP_TRY(write_floats(f, m->in_mean, (size_t)m->model->hp.n_embd));
        MOP_TRY(write_floats(f, m->in_std, (size_t)m->model->hp.n_embd));
    }
    return MOP_OK;
}

/* One tensor entry of the header: F32, shape, [begin, end) in floats. */
static int add_tensor(cJSON *root, const char *name, const int64_t *dims, int n_dims,
                      size_t begin, size_t end)
{
    cJSON *t = cJSON_AddObjectToObject(root, name);
    int ok = t != NULL && cJSON_AddStringToObject(t, "dtype", "F32") != NULL;
    cJSON *shape = ok ? cJSON_AddArrayToObject(t, "shape") : NULL;
    ok = shape != NULL;
    for (int k = 0; ok && k < n_dims; k++)
        ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)dims[k]));
    double offs[2] = {(double)(begin * 4), (double)(end * 4)};
    cJSON *o = ok ? cJSON_CreateDoubleArray(offs, 2) : NULL;
    return o != NULL && cJSON_AddItemToObject(t, "data_offsets", o);
}

static int meta_int(cJSON *meta, const char *key, long long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    return cJSON_AddStringToObject(meta, key, buf) != NULL;
}

static int meta_float(cJSON *meta, const char *key, float v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.9g", (double)v);
    return cJSON_AddStringToObject(meta, key, buf) != NULL;
}

static char *build_header(const mop_mixture *m)
{
    const mop_mixture_params *p = &m->p;
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = root ? cJSON_AddObjectToObject(root, "__metadata__") : NULL;
    int ok = meta != NULL;
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, p->seed);
    ok = ok && cJSON_AddStringToObject(meta, "format", MIX_FORMAT) != NULL;
    ok = ok && meta_int(meta, "format_version", MIX_VERSION);
    ok = ok && meta_int(meta, "d_model", m->model->hp.n_embd);
    ok = ok && meta_int(meta, "n_layer", m->model->hp.n_layer);
    ok = ok && meta_int(meta, "n_experts", p->n_experts);
    ok = ok && meta_int(meta, "prompt_len", p->prompt_len);
    ok = ok && meta_int(meta, "gate_layer", p->gate_layer);
    ok = ok && meta_int(meta, "inject_layer", p->inject_layer);
    ok = ok && meta_int(meta, "gate_hidden", p->gate_hidden);
    ok = ok && meta_int(meta, "gate_act", p->gate_act);
    ok = ok && meta_float(meta, "gate_temperature", p->gate_temperature);
    ok = ok && meta_int(meta, "top_k", p->top_k);
    ok = ok && meta_int(meta, "combine", p->combine);
    ok = ok && meta_int(meta, "gate_mode", p->gate_mode);
    ok = ok && meta_int(meta, "init", p->init);
    ok = ok && meta_float(meta, "init_std", p->init_std);
    ok = ok && cJSON_AddStringToObject(meta, "seed", seed) != NULL;
    ok = ok && meta_int(meta, "gate_pool", p->gate_pool);
    ok = ok && meta_int(meta, "gate_norm", p->gate_norm);
    ok = ok && meta_int(meta, "gate_bias", p->gate_bias);
    ok = ok && meta_int(meta, "n_shared", p->n_shared);
    ok = ok && meta_int(meta, "expert_attention", p->expert_attention);
    ok = ok && meta_int(meta, "top_k_renorm", p->top_k_renorm);
    for (int32_t i = 0; ok && i < m->n_tensors; i++) {
        mop_mixture_tensor_info ti = {.struct_size = sizeof ti};
        ok = mop_mixture_tensor_get_info(m, i, &ti) == MOP_OK &&
             add_tensor(root, tensor_names[i], ti.dims, ti.n_dims, ti.offset,
                        ti.offset + ti.size);
    }
    const int64_t d = m->model->hp.n_embd;
    for (int i = 0; ok && m->in_mean && i < 2; i++)
        ok = add_tensor(root, stat_names[i], &d, 1, m->n_params + (size_t)i * (size_t)d,
                        m->n_params + (size_t)(i + 1) * (size_t)d);
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

mop_status mop_mixture_save(const mop_mixture *m, const char *path)
{
    return mop_mixture_save_v2(m, path, 0);
}

mop_status mop_mixture_save_v2(const mop_mixture *m, const char *path, int32_t flags)
{
    MOP_CHECK_ARG(m);
    MOP_CHECK_ARG(path);
    MOP_CHECK_ARG((flags & ~MOP_SAVE_PRIVATE) == 0);
    char *text = build_header(m);
    if (!text)
        return mop_fail(MOP_E_NOMEM, "mop_mixture_save: %s: out of memory for the header", path);
    size_t raw = strlen(text);
    save_job j = {m, text, (raw + 7) / 8 * 8};
    mop_status st = mop_write_atomic_flags(path, flags, write_mixture, &j);
    cJSON_free(text);
    if (st != MOP_OK)
        mop_error_prefix("mop_mixture_save");
    return st;
}

/* ---- load ------------------------------------------------------------------- */

static mop_status meta_get(const cJSON *meta, const char *key, const char *what,
                           const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    if (!cJSON_IsString(v))
        return mop_fail(MOP_E_FORMAT, "%s: metadata \"%s\" missing", what, key);
    *out = v->valuestring;
    return MOP_OK;
}

static mop_status meta_get_i32(const cJSON *meta, const char *key, const char *what,
                               int32_t *out)
{
    const char *s = NULL;
    MOP_TRY(meta_get(meta, key, what, &s));
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < INT32_MIN || v > INT32_MAX)
        return mop_fail(MOP_E_FORMAT, "%s: metadata \"%s\" = \"%.32s\" is not a 32-bit integer",
                        what, key, s);
    *out = (int32_t)v;
    return MOP_OK;
}

static mop_status meta_get_f32(const cJSON *meta, const char *key, const char *what, float *out)
{
    const char *s = NULL;
    MOP_TRY(meta_get(meta, key, what, &s));
    char *end = NULL;
    float v = strtof(s, &end);
    if (end == s || *end || !isfinite(v))
        return mop_fail(MOP_E_FORMAT, "%s: metadata \"%s\" = \"%.32s\" is not a finite number",
                        what, key, s);
    *out = v;
    return MOP_OK;
}

static mop_status read_meta(const cJSON *meta, const char *what, int32_t d_model,
                            int32_t n_layer, mop_mixture_params *p, int *stats)
{
    const char *fmt = NULL, *seed = NULL;
    MOP_TRY(meta_get(meta, "format", what, &fmt));
    if (strcmp(fmt, MIX_FORMAT) != 0)
        return mop_fail(MOP_E_FORMAT, "%s: metadata format \"%.32s\" (expected \"%s\")", what,
                        fmt, MIX_FORMAT);
    int32_t version, file_d, file_L;
    MOP_TRY(meta_get_i32(meta, "format_version", what, &version));
    if (version < 1 || version > MIX_VERSION)
        return mop_fail(version < 1 ? MOP_E_FORMAT : MOP_E_UNSUPPORTED,
                        "%s: mixture format version %d (this libmop reads 1..%d)", what, version,
                        MIX_VERSION);
    MOP_TRY(meta_get_i32(meta, "d_model", what, &file_d));
    MOP_TRY(meta_get_i32(meta, "n_layer", what, &file_L));
    mop_mixture_params_init(p);
    MOP_TRY(meta_get_i32(meta, "n_experts", what, &p->n_experts));
    MOP_TRY(meta_get_i32(meta, "prompt_len", what, &p->prompt_len));
    MOP_TRY(meta_get_i32(meta, "gate_layer", what, &p->gate_layer));
    MOP_TRY(meta_get_i32(meta, "inject_layer", what, &p->inject_layer));
    MOP_TRY(meta_get_i32(meta, "gate_hidden", what, &p->gate_hidden));
    MOP_TRY(meta_get_i32(meta, "gate_act", what, &p->gate_act));
    MOP_TRY(meta_get_f32(meta, "gate_temperature", what, &p->gate_temperature));
    MOP_TRY(meta_get_i32(meta, "top_k", what, &p->top_k));
    MOP_TRY(meta_get_i32(meta, "combine", what, &p->combine));
    MOP_TRY(meta_get_i32(meta, "gate_mode", what, &p->gate_mode));
    MOP_TRY(meta_get_i32(meta, "init", what, &p->init));
    MOP_TRY(meta_get_f32(meta, "init_std", what, &p->init_std));
    MOP_TRY(meta_get(meta, "seed", what, &seed));
    char *end = NULL;
    errno = 0;
    unsigned long long sv = strtoull(seed, &end, 10);
    if (errno || end == seed || *end || seed[0] == '-')
        return mop_fail(MOP_E_FORMAT, "%s: metadata \"seed\" = \"%.32s\" is not an unsigned "
                        "64-bit integer", what, seed);
    p->seed = (uint64_t)sv;
    if (version == 1) { /* version 1 files: the behaviour of libmop 0.1 */
        p->gate_pool = MOP_POOL_PROMPT;
        p->gate_norm = 0;
        p->gate_bias = MOP_BIAS_LOG_W;
        p->n_shared = 0;
        p->expert_attention = MOP_EXPERTS_JOINT;
        p->top_k_renorm = 1;
    } else {
        MOP_TRY(meta_get_i32(meta, "gate_pool", what, &p->gate_pool));
        MOP_TRY(meta_get_i32(meta, "gate_norm", what, &p->gate_norm));
        MOP_TRY(meta_get_i32(meta, "gate_bias", what, &p->gate_bias));
        MOP_TRY(meta_get_i32(meta, "n_shared", what, &p->n_shared));
        MOP_TRY(meta_get_i32(meta, "expert_attention", what, &p->expert_attention));
        MOP_TRY(meta_get_i32(meta, "top_k_renorm", what, &p->top_k_renorm));
    }
    *stats = version >= 2 && p->gate_mode == MOP_GATE_LEARNED;
    if (file_d != d_model || file_L != n_layer)
        return mop_fail(MOP_E_SHAPE, "%s: mixture for d_model %d, %d layers; the model has "
                        "d_model %d, %d layers", what, file_d, file_L, d_model, n_layer);
    if (p->gate_layer < 0 || p->inject_layer < 0)
        return mop_fail(MOP_E_FORMAT, "%s: gate_layer %d / inject_layer %d must be resolved "
                        "(>= 0) in a file", what, p->gate_layer, p->inject_layer);
    mop_status st = mixture_resolve_params(p, n_layer, what);
    if (st != MOP_OK)
        return mop_fail(MOP_E_FORMAT, "%s: invalid mixture shape: %s", what, mop_last_error());
    return MOP_OK;
}

mop_status mixture_parse(const void *data, size_t size, const char *what, int32_t d_model,
                         int32_t n_layer, mop_mixture_params *params, float **values,
                         size_t *n_out)
{
    st_file *st = NULL;
    MOP_TRY(safetensors_parse(data, size, what, &st));
    mop_status s = MOP_OK;
    cJSON *root = cJSON_ParseWithLength((const char *)data + 8, (size_t)st->header_len);
    const cJSON *meta = root ? cJSON_GetObjectItemCaseSensitive(root, "__metadata__") : NULL;
    float *vals = NULL;
    if (!root)
        s = mop_fail(MOP_E_FORMAT, "%s: header is not valid JSON", what);
    else if (!meta)
        s = mop_fail(MOP_E_FORMAT, "%s: no __metadata__ (not a libmop mixture)", what);
    mop_mixture_params p;
    mop_mixture_params_init(&p);
    int stats = 0;
    if (s == MOP_OK)
        s = read_meta(meta, what, d_model, n_layer, &p, &stats);

    /* expected tensors, shapes and flat offsets: the flat buffer's tensors,
     * then the gate's input statistics */
    enum { N_FILE_T = GATE_T_COUNT + 2 };
    size_t K = (size_t)p.n_experts, h = (size_t)p.gate_hidden, d = (size_t)d_model;
    size_t G = s == MOP_OK ? (size_t)mixture_groups(&p) : 0;
    const char *names[N_FILE_T] = {tensor_names[0], tensor_names[1], tensor_names[2],
                                   tensor_names[3], tensor_names[4], stat_names[0],
                                   stat_names[1]};
    int32_t idx[N_FILE_T], n_t = 0;
    size_t total = 0;
    if (s == MOP_OK) {
        const int learned = p.gate_mode == MOP_GATE_LEARNED;
        for (int32_t i = 0; i < N_FILE_T; i++)
            if (i == GATE_T_EXPERTS || (learned && i < GATE_T_COUNT) ||
                (stats && i >= GATE_T_COUNT))
                idx[n_t++] = i;
        if (st->n_tensors != n_t)
            s = mop_fail(MOP_E_FORMAT, "%s: %lld tensors (a mixture of this shape has %d)", what,
                         (long long)st->n_tensors, n_t);
    }
    const int64_t dims[N_FILE_T][3] = {{(int64_t)G, p.prompt_len, (int64_t)d},
                                       {(int64_t)h, (int64_t)d},
                                       {(int64_t)h},
                                       {(int64_t)K, (int64_t)h},
                                       {(int64_t)K},
                                       {(int64_t)d},
                                       {(int64_t)d}};
    const int nd[N_FILE_T] = {3, 2, 1, 2, 1, 1, 1};
    size_t sizes[N_FILE_T] = {G * (size_t)p.prompt_len * d, h * d, h, K * h, K, d, d};
    for (int32_t j = 0; s == MOP_OK && j < n_t; j++)
        total += sizes[idx[j]];
    if (s == MOP_OK) {
        vals = mop_alloc(total * sizeof(float));
        if (!vals)
            s = mop_fail(MOP_E_NOMEM, "%s: out of memory for %zu floats", what, total);
    }
    size_t off = 0;
    for (int32_t j = 0; s == MOP_OK && j < n_t; j++) {
        const int32_t i = idx[j];
        const st_tensor *t = safetensors_find(st, names[i]);
        if (!t) {
            s = mop_fail(MOP_E_FORMAT, "%s: tensor \"%s\" missing", what, names[i]);
            break;
        }
        if (strcmp(t->dtype, "F32") != 0) {
            s = mop_fail(MOP_E_FORMAT, "%s: tensor %s has dtype %s (expected F32)", what,
                         names[i], t->dtype);
            break;
        }
        int shape_ok = t->n_dims == nd[i];
        for (int k = 0; shape_ok && k < nd[i]; k++)
            shape_ok = t->dims[k] == dims[i][k];
        if (!shape_ok) {
            s = mop_fail(MOP_E_FORMAT, "%s: tensor %s: shape does not match the metadata "
                         "(n_experts %d, prompt_len %d, gate_hidden %d, d_model %d)", what,
                         names[i], p.n_experts, p.prompt_len, p.gate_hidden, d_model);
            break;
        }
        const uint8_t *src = t->data;
        for (size_t e = 0; e < sizes[i]; e++) {
            float v = mop_get_le_f32(src + 4 * e);
            if (!isfinite(v)) {
                s = mop_fail(MOP_E_FORMAT, "%s: tensor %s: element %zu is not finite", what,
                             names[i], e);
                break;
            }
            if (i == GATE_T_COUNT + 1 && !(v > 0.0f)) {
                s = mop_fail(MOP_E_FORMAT, "%s: tensor %s: element %zu is %g (need > 0)", what,
                             names[i], e, (double)v);
                break;
            }
            vals[off + e] = v;
        }
        off += sizes[i];
    }
    cJSON_Delete(root);
    safetensors_free(st);
    if (s != MOP_OK) {
        mop_free(vals);
        return s;
    }
    *params = p;
    *values = vals;
    *n_out = total;
    return MOP_OK;
}

mop_status mop_mixture_load(mop_model *model, const char *path, mop_mixture **out)
{
    MOP_CHECK_ARG(model);
    MOP_CHECK_ARG(path);
    MOP_CHECK_ARG(out);
    void *data = NULL;
    size_t size = 0;
    MOP_TRY(mop_map_file(path, &data, &size));
    mop_mixture_params p;
    float *vals = NULL;
    size_t n = 0;
    mop_status s = mixture_parse(data, size, path, model->hp.n_embd, model->hp.n_layer, &p,
                                 &vals, &n);
    mop_unmap_file(data, size);
    if (s != MOP_OK)
        return s;
    mop_mixture *m = NULL;
    s = mixture_alloc(model, &p, &m);
    const size_t d = (size_t)model->hp.n_embd;
    const int stats = s == MOP_OK && m->in_mean && n == m->n_params + 2 * d;
    if (s == MOP_OK && m->n_params != n && !stats) {
        s = mop_fail(MOP_E_INTERNAL, "mop_mixture_load: %zu values for %zu parameters", n,
                     m->n_params);
        mop_mixture_free(m);
    }
    if (s != MOP_OK) {
        mop_free(vals);
        return s;
    }
    memcpy(m->params, vals, m->n_params * sizeof(float));
    if (stats) {
        memcpy(m->in_mean, vals + m->n_params, d * sizeof(float));
        memcpy(m->in_std, vals + m->n_params + d, d * sizeof(float));
    }
    mop_free(vals);
    *out = m;
    return MOP_OK;
}
