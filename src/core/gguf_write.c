/* GGUF v3 writer (layout in gguf.c's header comment): metadata bytes are
 * assembled in a growing buffer; tensor offsets are assigned at write time,
 * each a multiple of GGUF_WRITE_ALIGNMENT from the data section's start. */
#include <string.h>

#include "byte_order.h"
#include "fileio.h"
#include "gguf.h"
#include "gguf_write.h"

typedef struct gw_tensor {
    char *name;
    uint32_t type;
    int n_dims;
    int64_t dims[4];
    const void *data;
    uint64_t nbytes;
    gguf_emit_fn emit;
    const void *obj;
} gw_tensor;

struct gguf_writer {
    uint8_t *kv;
    size_t kv_n, kv_cap;
    uint64_t n_kv;
    size_t *key_off; /* offset of each key's length field in kv */
    size_t key_cap;
    gw_tensor *t;
    int64_t n_t, cap_t;
};

mop_status gguf_writer_create(gguf_writer **out)
{
    MOP_CHECK_ARG(out);
    gguf_writer *w = mop_calloc(1, sizeof *w);
    if (!w)
        return mop_fail(MOP_E_NOMEM, "out of memory for a GGUF writer");
    *out = w;
    return MOP_OK;
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w)
        return;
    for (int64_t i = 0; i < w->n_t; i++)
        mop_free(w->t[i].name);
    mop_free(w->t);
    mop_free(w->kv);
    mop_free(w->key_off);
    mop_free(w);
}

static mop_status put(gguf_writer *w, const void *p, size_t n)
{
    if (w->kv_n + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_n + n)
            cap *= 2;
        uint8_t *b = mop_alloc(cap);
        if (!b)
            return mop_fail(MOP_E_NOMEM, "out of memory for GGUF metadata (%zu bytes)", cap);
        if (w->kv_n)
            memcpy(b, w->kv, w->kv_n);
        mop_free(w->kv);
        w->kv = b;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_n, p, n);
    w->kv_n += n;
    return MOP_OK;
}

int gguf_writer_has_key(const gguf_writer *w, const char *key, size_t key_len)
{
    for (uint64_t i = 0; i < w->n_kv; i++) {
        const uint8_t *k = w->kv + w->key_off[i];
        if (mop_get_le64(k) == key_len && memcmp(k + 8, key, key_len) == 0)
            return 1;
    }
    return 0;
}

/* key (u64 length + bytes), u32 type, then the value's bytes. */
static mop_status add_kv(gguf_writer *w, const char *key, size_t key_len, uint32_t type,
                         const void *val, size_t n)
{
    if (gguf_writer_has_key(w, key, key_len))
        return mop_fail(MOP_E_INVALID_ARG, "GGUF key %.*s written twice", (int)MOP_MIN(key_len, 200),
                        key);
    if (w->n_kv == w->key_cap) {
        size_t cap = w->key_cap ? 2 * w->key_cap : 64;
        size_t *o = mop_alloc(cap * sizeof *o);
        if (!o)
            return mop_fail(MOP_E_NOMEM, "out of memory for GGUF metadata keys");
        if (w->n_kv)
            memcpy(o, w->key_off, (size_t)w->n_kv * sizeof *o);
        mop_free(w->key_off);
        w->key_off = o;
        w->key_cap = cap;
    }
    size_t at = w->kv_n;
    uint8_t h[8];
    mop_put_le64(h, key_len);
    MOP_TRY(put(w, h, 8));
    MOP_TRY(put(w, key, key_len));
    mop_put_le32(h, (uint32_t)(type));
    MOP_TRY(put(w, h, 4));
    MOP_TRY(put(w, val, n));
    w->key_off[w->n_kv++] = at;
    return MOP_OK;
}

mop_status gguf_writer_kv_str(gguf_writer *w, const char *key, const char *s)
{
    MOP_CHECK_ARG(w && key && s);
    size_t n = strlen(s);
    uint8_t *v = mop_alloc(8 + n);
    if (!v)
        return mop_fail(MOP_E_NOMEM, "out of memory for GGUF metadata");
    mop_put_le64(v, n);
    memcpy(v + 8, s, n);
    mop_status st = add_kv(w, key, strlen(key), GGUF_TYPE_STRING, v, 8 + n);
    mop_free(v);
    return st;
}

mop_status gguf_writer_kv_u32(gguf_writer *w, const char *key, uint32_t v)
{
    MOP_CHECK_ARG(w && key);
    uint8_t b[4];
    mop_put_le32(b, (uint32_t)(v));
    return add_kv(w, key, strlen(key), GGUF_TYPE_UINT32, b, 4);
}

mop_status gguf_writer_kv_f32(gguf_writer *w, const char *key, float v)
{
    MOP_CHECK_ARG(w && key);
    uint32_t u;
    memcpy(&u, &v, 4);
    uint8_t b[4];
    mop_put_le32(b, (uint32_t)(u));
    return add_kv(w, key, strlen(key), GGUF_TYPE_FLOAT32, b, 4);
}

static size_t fixed_size(uint32_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

/* Bytes of a value of `type` at p (size bytes left); 0 when malformed. */
static size_t value_size(const uint8_t *p, size_t size, uint32_t type)
{
    if (type == GGUF_TYPE_STRING) {
        if (size < 8 || mop_get_le64(p) > size - 8)
            return 0;
        return 8 + (size_t)mop_get_le64(p);
    }
    if (type != GGUF_TYPE_ARRAY)
        return fixed_size(type) <= size ? fixed_size(type) : 0;
    if (size < 12)
        return 0;
    uint32_t et = mop_get_le32(p);
    uint64_t n = mop_get_le64(p + 4);
    size_t at = 12;
    if (et == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            size_t s = value_size(p + at, size - at, GGUF_TYPE_STRING);
            if (!s)
                return 0;
            at += s;
        }
        return at;
    }
    size_t es = fixed_size(et);
    if (!es || n > (size - at) / es)
        return 0;
    return at + (size_t)n * es;
}

mop_status gguf_writer_copy_kvs(gguf_writer *w, const void *image, size_t size,
                                int (*skip)(const char *key, size_t len))
{
    MOP_CHECK_ARG(w && image);
    const uint8_t *p = image;
    if (size < 24 || memcmp(p, "GGUF", 4) != 0)
        return mop_fail(MOP_E_FORMAT, "source metadata: not a GGUF image");
    uint64_t n_kv = mop_get_le64(p + 16);
    size_t at = 24;
    for (uint64_t i = 0; i < n_kv; i++) {
        if (size - at < 8 || mop_get_le64(p + at) > size - at - 8 - 4)
            return mop_fail(MOP_E_FORMAT, "source metadata entry %llu is truncated",
                            (unsigned long long)i);
        size_t klen = (size_t)mop_get_le64(p + at);
        const char *key = (const char *)p + at + 8;
        uint32_t type = mop_get_le32(p + at + 8 + klen);
        size_t vat = at + 8 + klen + 4, vs = value_size(p + vat, size - vat, type);
        if (!vs)
            return mop_fail(MOP_E_FORMAT, "source metadata entry %llu is malformed",
                            (unsigned long long)i);
        if (!gguf_writer_has_key(w, key, klen) && !(skip && skip(key, klen)))
            MOP_TRY(add_kv(w, key, klen, type, p + vat, vs));
        at = vat + vs;
    }
    return MOP_OK;
}

mop_status gguf_writer_tensor(gguf_writer *w, const char *name, uint32_t type, int n_dims,
                              const int64_t *dims, const void *data, uint64_t nbytes,
                              gguf_emit_fn emit, const void *obj)
{
    MOP_CHECK_ARG(w && name && dims && n_dims >= 1 && n_dims <= 4 && (data || emit));
    if (w->n_t == w->cap_t) {
        int64_t cap = w->cap_t ? 2 * w->cap_t : 64;
        gw_tensor *t = mop_alloc((size_t)cap * sizeof *t);
        if (!t)
            return mop_fail(MOP_E_NOMEM, "out of memory for GGUF tensor entries");
        if (w->n_t)
            memcpy(t, w->t, (size_t)w->n_t * sizeof *t);
        mop_free(w->t);
        w->t = t;
        w->cap_t = cap;
    }
    gw_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = mop_strdup(name);
    if (!t->name)
        return mop_fail(MOP_E_NOMEM, "out of memory for tensor name %s", name);
    t->type = type;
    t->n_dims = n_dims;
    memcpy(t->dims, dims, (size_t)n_dims * sizeof *dims);
    t->data = data;
    t->nbytes = nbytes;
    t->emit = emit;
    t->obj = obj;
    w->n_t++;
    return MOP_OK;
}

static uint64_t align_up(uint64_t x)
{
    return (x + GGUF_WRITE_ALIGNMENT - 1) / GGUF_WRITE_ALIGNMENT * GGUF_WRITE_ALIGNMENT;
}

static mop_status pad(FILE *f, uint64_t *pos)
{
    static const uint8_t zeros[GGUF_WRITE_ALIGNMENT];
    uint64_t to = align_up(*pos);
    if (to > *pos)
        MOP_TRY(mop_fwrite_all(f, zeros, (size_t)(to - *pos)));
    *pos = to;
    return MOP_OK;
}

mop_status gguf_writer_write(const gguf_writer *w, FILE *f)
{
    MOP_CHECK_ARG(w && f);
    uint8_t h[24];
    memcpy(h, "GGUF", 4);
    mop_put_le32(h + 4, (uint32_t)(3));
    mop_put_le64(h + 8, (uint64_t)w->n_t);
    mop_put_le64(h + 16, w->n_kv);
    MOP_TRY(mop_fwrite_all(f, h, sizeof h));
    if (w->kv_n)
        MOP_TRY(mop_fwrite_all(f, w->kv, w->kv_n));
    uint64_t pos = sizeof h + w->kv_n, off = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        const gw_tensor *t = &w->t[i];
        size_t nl = strlen(t->name);
        uint8_t b[8];
        mop_put_le64(b, nl);
        MOP_TRY(mop_fwrite_all(f, b, 8));
        MOP_TRY(mop_fwrite_all(f, t->name, nl));
        mop_put_le32(b, (uint32_t)((uint64_t)t->n_dims));
        MOP_TRY(mop_fwrite_all(f, b, 4));
        for (int d = t->n_dims - 1; d >= 0; d--) { /* GGUF: contiguous dimension first */
            mop_put_le64(b, (uint64_t)t->dims[d]);
            MOP_TRY(mop_fwrite_all(f, b, 8));
        }
        mop_put_le32(b, (uint32_t)(t->type));
        MOP_TRY(mop_fwrite_all(f, b, 4));
        mop_put_le64(b, off);
        MOP_TRY(mop_fwrite_all(f, b, 8));
        pos += 8 + nl + 4 + 8 * (uint64_t)t->n_dims + 4 + 8;
        off = align_up(off + t->nbytes);
    }
    for (int64_t i = 0; i < w->n_t; i++) {
        const gw_tensor *t = &w->t[i];
        MOP_TRY(pad(f, &pos));
        if (t->data)
            MOP_TRY(mop_fwrite_all(f, t->data, (size_t)t->nbytes));
        else
            MOP_TRY(t->emit(f, t->obj, t->nbytes));
        pos += t->nbytes;
    }
    return MOP_OK;
}
