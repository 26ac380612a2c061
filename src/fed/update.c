/* mop_update: named F32 tensors with provenance (kind, round, client id,
 * sample count) and string metadata. Serialization is in update_format.c. */
#include <math.h>
#include <string.h>

#include "fed.h"
#include "internal.h"

int fed_utf8_ok(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        int extra;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            extra = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (len - i <= (size_t)extra)
            return 0;
        for (int j = 1; j <= extra; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0; /* overlong, beyond Unicode, or a surrogate */
        i += (size_t)extra + 1;
    }
    return 1;
}

mop_status mop_update_create(int32_t kind, int64_t round, uint64_t client_id, double n_samples,
                             mop_update **out)
{
    MOP_CHECK_ARG(out != NULL);
    if (kind != MOP_UPDATE_DELTA && kind != MOP_UPDATE_FULL)
        return mop_fail(MOP_E_INVALID_ARG, "mop_update_create: kind must be 0 (delta) or 1 (full), got %d",
                        (int)kind);
    if (round < 0)
        return mop_fail(MOP_E_INVALID_ARG, "mop_update_create: round must be >= 0, got %lld",
                        (long long)round);
    if (!(n_samples >= 0.0 && isfinite(n_samples)))
        return mop_fail(MOP_E_INVALID_ARG,
                        "mop_update_create: n_samples must be finite and >= 0, got %g", n_samples);
    mop_update *u = mop_calloc(1, sizeof *u);
    if (!u)
        return mop_fail(MOP_E_NOMEM, "mop_update_create: out of memory");
    u->kind = kind;
    u->round = round;
    u->client_id = client_id;
    u->n_samples = n_samples;
    *out = u;
    return MOP_OK;
}

void mop_update_free(mop_update *u)
{
    if (!u)
        return;
    for (int32_t i = 0; i < u->n_tensors; i++) {
        mop_free(u->tensors[i].name);
        mop_free(u->tensors[i].data);
    }
    mop_free(u->tensors);
    mop_free(u->index);
    for (int32_t i = 0; i < u->n_meta; i++) {
        mop_free(u->meta_key[i]);
        mop_free(u->meta_value[i]);
    }
    mop_free(u->meta_key);
    mop_free(u->meta_value);
    mop_free(u);
}

/* FNV-1a over the name's bytes. */
static uint64_t name_hash(const char *name)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return h;
}

/* Slot of @p name in the index: the slot holding it, or the empty slot where
 * it would go. The index is never full (load factor <= 1/2). */
static size_t index_slot(const mop_update *u, const char *name)
{
    size_t mask = u->index_cap - 1;
    size_t i = (size_t)name_hash(name) & mask;
    while (u->index[i] != 0 && strcmp(u->tensors[u->index[i] - 1].name, name) != 0)
        i = (i + 1) & mask;
    return i;
}

const fed_tensor *fed_update_find(const mop_update *u, const char *name)
{
    if (!u->index)
        return NULL;
    int32_t k = u->index[index_slot(u, name)];
    return k ? &u->tensors[k - 1] : NULL;
}

/* Make room in the index for one more tensor (rehashing into a table twice
 * as large when the load factor would pass 1/2). */
static mop_status grow_index(mop_update *u)
{
    if (u->index && 2 * ((size_t)u->n_tensors + 1) <= u->index_cap)
        return MOP_OK;
    size_t cap = u->index_cap ? 2 * u->index_cap : 16;
    int32_t *idx = mop_calloc(cap, sizeof *idx);
    if (!idx)
        return mop_fail(MOP_E_NOMEM, "update: out of memory for the tensor name index");
    mop_free(u->index);
    u->index = idx;
    u->index_cap = cap;
    for (int32_t i = 0; i < u->n_tensors; i++)
        u->index[index_slot(u, u->tensors[i].name)] = i + 1;
    return MOP_OK;
}

/* Validate name and shape; on success *size holds the number of floats. */
static mop_status check_tensor(const mop_update *u, const char *name, int32_t n_dims,
                               const int64_t *dims, int64_t *size)
{
    size_t len = strlen(name);
    if (len < 1 || len > FED_MAX_NAME || !fed_utf8_ok(name, len))
        return mop_fail(MOP_E_INVALID_ARG,
                        "update tensor name must be 1..%d bytes of UTF-8, got %zu bytes",
                        FED_MAX_NAME, len);
    if (fed_update_find(u, name))
        return mop_fail(MOP_E_INVALID_ARG, "update tensor %s: duplicate name", name);
    if (u->n_tensors >= FED_MAX_TENSORS)
        return mop_fail(MOP_E_INVALID_ARG, "update tensor %s: more than %d tensors", name,
                        FED_MAX_TENSORS);
    if (n_dims < 1 || n_dims > FED_MAX_DIMS)
        return mop_fail(MOP_E_INVALID_ARG, "update tensor %s: n_dims must be 1..%d, got %d", name,
                        FED_MAX_DIMS, (int)n_dims);
    size_t total = 1;
    for (int32_t d = 0; d < n_dims; d++) {
        if (dims[d] < 1)
            return mop_fail(MOP_E_INVALID_ARG, "update tensor %s: dim %d must be >= 1, got %lld",
                            name, (int)d, (long long)dims[d]);
        if (!mop_mul_ok(total, (size_t)dims[d], &total) || total > ((size_t)1 << 40))
            return mop_fail(MOP_E_INVALID_ARG, "update tensor %s: too many elements", name);
    }
    *size = (int64_t)total;
    return MOP_OK;
}

static mop_status grow_tensors(mop_update *u)
{
    if (u->n_tensors < u->cap_tensors)
        return MOP_OK;
    int32_t cap = u->cap_tensors ? 2 * u->cap_tensors : 8;
    fed_tensor *t = mop_calloc((size_t)cap, sizeof *t);
    if (!t)
        return mop_fail(MOP_E_NOMEM, "update: out of memory for the tensor table");
    if (u->n_tensors)
        memcpy(t, u->tensors, (size_t)u->n_tensors * sizeof *t);
    mop_free(u->tensors);
    u->tensors = t;
    u->cap_tensors = cap;
    return MOP_OK;
}

mop_status fed_update_add_owned(mop_update *u, const char *name, float *data, int32_t n_dims,
                                const int64_t *dims)
{
    int64_t size = 0;
    MOP_TRY(check_tensor(u, name, n_dims, dims, &size));
    MOP_TRY(grow_tensors(u));
    MOP_TRY(grow_index(u));
    char *nm = mop_strdup(name);
    if (!nm)
        return mop_fail(MOP_E_NOMEM, "update tensor %s: out of memory", name);
    fed_tensor *t = &u->tensors[u->n_tensors++];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->data = data;
    t->size = size;
    t->n_dims = n_dims;
    for (int32_t d = 0; d < n_dims; d++)
        t->dims[d] = dims[d];
    u->index[index_slot(u, nm)] = u->n_tensors;
    return MOP_OK;
}

mop_status mop_update_add_tensor(mop_update *u, const char *name, const float *data,
                                 int32_t n_dims, const int64_t *dims)
{
    MOP_CHECK_ARG(u != NULL);
    MOP_CHECK_ARG(name != NULL);
    MOP_CHECK_ARG(data != NULL);
    MOP_CHECK_ARG(dims != NULL);
    int64_t size = 0;
    MOP_TRY(check_tensor(u, name, n_dims, dims, &size));
    for (int64_t i = 0; i < size; i++)
        if (!isfinite(data[i]))
            return mop_fail(MOP_E_INVALID_ARG, "update tensor %s: value %lld is %g (NaN/Inf not allowed)",
                            name, (long long)i, (double)data[i]);
    float *copy = mop_alloc((size_t)size * sizeof *copy);
    if (!copy)
        return mop_fail(MOP_E_NOMEM, "update tensor %s: out of memory for %lld floats", name,
                        (long long)size);
    memcpy(copy, data, (size_t)size * sizeof *copy);
    mop_status s = fed_update_add_owned(u, name, copy, n_dims, dims);
    if (s != MOP_OK)
        mop_free(copy);
    return s;
}

int32_t mop_update_tensor_count(const mop_update *u)
{
    return u ? u->n_tensors : 0;
}

mop_status mop_update_get_tensor(const mop_update *u, int32_t index, const char *name,
                                 mop_update_tensor_info *info)
{
    MOP_CHECK_ARG(u != NULL);
    MOP_CHECK_ARG(info != NULL);
    MOP_CHECK_STRUCT_SIZE("mop_update_get_tensor", info, MOP_OUT_STRUCT_MIN);
    const fed_tensor *t = NULL;
    if (index >= 0) {
        if (index >= u->n_tensors)
            return mop_fail(MOP_E_RANGE, "mop_update_get_tensor: index %d out of range (%d tensors)",
                            (int)index, (int)u->n_tensors);
        t = &u->tensors[index];
    } else {
        MOP_CHECK_ARG(name != NULL);
        t = fed_update_find(u, name);
        if (!t)
            return mop_fail(MOP_E_RANGE, "mop_update_get_tensor: no tensor named %s", name);
    }
    /* fill a full struct, copy the caller's struct_size bytes (older callers
     * pass a smaller struct) */
    mop_update_tensor_info r;
    memset(&r, 0, sizeof r);
    r.struct_size = info->struct_size;
    r.name = t->name;
    r.data = t->data;
    r.size = t->size;
    r.n_dims = t->n_dims;
    for (int d = 0; d < FED_MAX_DIMS; d++)
        r.dims[d] = d < t->n_dims ? t->dims[d] : 1;
    memcpy(info, &r, info->struct_size);
    return MOP_OK;
}

mop_status mop_update_get_header(const mop_update *u, mop_update_header *out)
{
    MOP_CHECK_ARG(u != NULL);
    MOP_CHECK_ARG(out != NULL);
    MOP_CHECK_STRUCT_SIZE("mop_update_get_header", out, MOP_OUT_STRUCT_MIN);
    mop_update_header h;
    memset(&h, 0, sizeof h);
    h.struct_size = out->struct_size;
    h.kind = u->kind;
    h.round = u->round;
    h.client_id = u->client_id;
    h.n_samples = u->n_samples;
    memcpy(out, &h, out->struct_size);
    return MOP_OK;
}

mop_status mop_update_set_meta(mop_update *u, const char *key, const char *value)
{
    MOP_CHECK_ARG(u != NULL);
    MOP_CHECK_ARG(key != NULL);
    MOP_CHECK_ARG(value != NULL);
    size_t kl = strlen(key), vl = strlen(value);
    if (kl < 1 || kl > FED_MAX_NAME || !fed_utf8_ok(key, kl))
        return mop_fail(MOP_E_INVALID_ARG, "update metadata key must be 1..%d bytes of UTF-8",
                        FED_MAX_NAME);
    if (vl > FED_MAX_META_VALUE || !fed_utf8_ok(value, vl))
        return mop_fail(MOP_E_INVALID_ARG,
                        "update metadata %s: value must be at most %d bytes of UTF-8, got %zu bytes",
                        key, FED_MAX_META_VALUE, vl);
    char *v = mop_strdup(value);
    if (!v)
        return mop_fail(MOP_E_NOMEM, "update metadata %s: out of memory", key);
    for (int32_t i = 0; i < u->n_meta; i++) {
        if (strcmp(u->meta_key[i], key) == 0) {
            mop_free(u->meta_value[i]);
            u->meta_value[i] = v;
            return MOP_OK;
        }
    }
    if (u->n_meta >= FED_MAX_META) {
        mop_free(v);
        return mop_fail(MOP_E_INVALID_ARG, "update metadata %s: more than %d keys", key,
                        FED_MAX_META);
    }
    char *k = mop_strdup(key);
    if (!k) {
        mop_free(v);
        return mop_fail(MOP_E_NOMEM, "update metadata %s: out of memory", key);
    }
    if (u->n_meta == u->cap_meta) {
        int32_t cap = u->cap_meta ? 2 * u->cap_meta : 4;
        char **nk = mop_calloc((size_t)cap, sizeof *nk);
        char **nv = mop_calloc((size_t)cap, sizeof *nv);
        if (!nk || !nv) {
            mop_free(nk);
            mop_free(nv);
            mop_free(k);
            mop_free(v);
            return mop_fail(MOP_E_NOMEM, "update metadata %s: out of memory", key);
        }
        if (u->n_meta) {
            memcpy(nk, u->meta_key, (size_t)u->n_meta * sizeof *nk);
            memcpy(nv, u->meta_value, (size_t)u->n_meta * sizeof *nv);
        }
        mop_free(u->meta_key);
        mop_free(u->meta_value);
        u->meta_key = nk;
        u->meta_value = nv;
        u->cap_meta = cap;
    }
    u->meta_key[u->n_meta] = k;
    u->meta_value[u->n_meta] = v;
    u->n_meta++;
    return MOP_OK;
}

mop_status mop_update_get_meta(const mop_update *u, const char *key, const char **value)
{
    MOP_CHECK_ARG(u != NULL);
    MOP_CHECK_ARG(key != NULL);
    MOP_CHECK_ARG(value != NULL);
    for (int32_t i = 0; i < u->n_meta; i++) {
        if (strcmp(u->meta_key[i], key) == 0) {
            *value = u->meta_value[i];
            return MOP_OK;
        }
    }
    return mop_fail(MOP_E_RANGE, "update metadata: no key %s", key);
}
