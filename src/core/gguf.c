/* GGUF v2/v3 reader.
 *
 * Layout (little-endian):
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv
 *   n_kv    x { string key, u32 type, value }
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset }
 *   padding to `general.alignment` (default 32), then the data section;
 *   tensor offsets are relative to its start and multiples of the alignment.
 * A string is u64 length + bytes (no NUL); an array is u32 elem_type, u64 n,
 * then n elements. ne[0] is the contiguous dimension (reversed on read).
 *
 * Every length and count is checked against the bytes that remain before it
 * is used, with overflow-checked arithmetic, so no input makes the parser
 * read out of bounds or allocate more than a small multiple of the input. */
#include <stdlib.h>
#include <string.h>

#include "byte_order.h"
#include "gguf.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

typedef struct gguf_kv {
    const uint8_t *key; /* not NUL-terminated */
    size_t key_len;
    uint32_t type;
    const uint8_t *val; /* the value's bytes, after the type field */
    gguf_array arr;     /* arrays only */
} gguf_kv;

struct gguf_file {
    const uint8_t *base;
    size_t size;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_start;

    gguf_kv *kv;
    int64_t n_kv;
    int64_t *kv_sorted; /* kv indices by key */

    mop_src_tensor *tensors; /* file order, contiguous */
    uint64_t *offsets;       /* relative to data_start */
    int64_t n_tensors;
    int64_t *t_sorted;       /* tensor indices by name */
    char *names;             /* NUL-terminated tensor names */
};

/* ---- bounded little-endian cursor ---------------------------------------- */

typedef struct cursor {
    const uint8_t *p;
    size_t size, pos;
    const char *what; /* prefix for messages, "" for none */
    const char *sep;
} cursor;

static size_t remaining(const cursor *c)
{
    return c->size - c->pos;
}

static mop_status need(cursor *c, uint64_t n, const char *field)
{
    if (n > remaining(c))
        return mop_fail(MOP_E_FORMAT,
                        "%s%struncated: %s at offset %zu needs %llu bytes, %zu left (file is %zu "
                        "bytes)",
                        c->what, c->sep, field, c->pos, (unsigned long long)n, remaining(c),
                        c->size);
    return MOP_OK;
}

static mop_status rd_u32(cursor *c, uint32_t *v, const char *field)
{
    MOP_TRY(need(c, 4, field));
    *v = mop_get_le32(c->p + c->pos);
    c->pos += 4;
    return MOP_OK;
}

static mop_status rd_u64(cursor *c, uint64_t *v, const char *field)
{
    MOP_TRY(need(c, 8, field));
    *v = mop_get_le64(c->p + c->pos);
    c->pos += 8;
    return MOP_OK;
}

/* A string: its bytes stay in the image. */
static mop_status rd_str(cursor *c, const uint8_t **s, size_t *len, const char *field)
{
    uint64_t n;
    MOP_TRY(rd_u64(c, &n, field));
    MOP_TRY(need(c, n, field));
    *s = c->p + c->pos;
    *len = (size_t)n;
    c->pos += (size_t)n;
    return MOP_OK;
}

/* Size of one fixed-size value of type t; 0 for strings, arrays and unknown types. */
static size_t type_size(uint32_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

/* ---- metadata ------------------------------------------------------------- */

/* The value of kv (whose type is already read); arrays get their index. */
static mop_status read_value(cursor *c, gguf_kv *kv)
{
    const int key_len = kv->key_len > 200 ? 200 : (int)kv->key_len;
    const char *key = (const char *)kv->key;
    kv->val = c->p + c->pos;
    if (kv->type == GGUF_TYPE_STRING) {
        const uint8_t *s;
        size_t n;
        return rd_str(c, &s, &n, "string value");
    }
    if (kv->type != GGUF_TYPE_ARRAY) {
        size_t sz = type_size(kv->type);
        if (!sz)
            return mop_fail(MOP_E_FORMAT, "%s%skey %.*s: unknown value type %u", c->what, c->sep,
                            key_len, key, kv->type);
        MOP_TRY(need(c, sz, "value"));
        c->pos += sz;
        return MOP_OK;
    }
    uint32_t et;
    uint64_t n;
    MOP_TRY(rd_u32(c, &et, "array type"));
    MOP_TRY(rd_u64(c, &n, "array length"));
    kv->arr.elem_type = (int32_t)et;
    kv->arr.n = n;
    kv->arr.data = c->p + c->pos;
    if (et == GGUF_TYPE_ARRAY)
        return mop_fail(MOP_E_FORMAT, "%s%skey %.*s: nested arrays are not supported", c->what,
                        c->sep, key_len, key);
    if (et == GGUF_TYPE_STRING) {
        /* each element needs at least its 8-byte length */
        if (n > remaining(c) / 8)
            return mop_fail(MOP_E_FORMAT,
                            "%s%skey %.*s: array of %llu strings cannot fit in the %zu bytes left",
                            c->what, c->sep, key_len, key, (unsigned long long)n, remaining(c));
        uint64_t *offs = mop_alloc(n ? (size_t)n * sizeof *offs : 1);
        if (!offs)
            return mop_fail(MOP_E_NOMEM, "key %.*s: out of memory for %llu strings", key_len,
                            key, (unsigned long long)n);
        kv->arr.string_offsets = offs;
        size_t start = c->pos;
        for (uint64_t i = 0; i < n; i++) {
            offs[i] = c->pos - start;
            const uint8_t *s;
            size_t len;
            MOP_TRY(rd_str(c, &s, &len, "array string"));
        }
        return MOP_OK;
    }
    size_t sz = type_size(et);
    if (!sz)
        return mop_fail(MOP_E_FORMAT, "%s%skey %.*s: unknown array element type %u", c->what,
                        c->sep, key_len, key, et);
    if (n > remaining(c) / sz)
        return mop_fail(MOP_E_FORMAT,
                        "%s%skey %.*s: array of %llu elements of %zu bytes cannot fit in the %zu "
                        "bytes left",
                        c->what, c->sep, key_len, key, (unsigned long long)n, sz, remaining(c));
    c->pos += (size_t)n * sz;
    return MOP_OK;
}

static int cmp_bytes(const uint8_t *a, size_t na, const uint8_t *b, size_t nb)
{
    int r = memcmp(a, b, na < nb ? na : nb);
    if (r)
        return r;
    return na < nb ? -1 : na > nb;
}

/* qsort takes no context argument, so the table an index is sorted by is
 * passed through a thread-local set just before the call. */
static _Thread_local const gguf_kv *sort_kv;
static _Thread_local const mop_src_tensor *sort_t;

static int cmp_kv_idx(const void *a, const void *b)
{
    const gguf_kv *x = &sort_kv[*(const int64_t *)a], *y = &sort_kv[*(const int64_t *)b];
    return cmp_bytes(x->key, x->key_len, y->key, y->key_len);
}

static int cmp_t_idx(const void *a, const void *b)
{
    return strcmp(sort_t[*(const int64_t *)a].name, sort_t[*(const int64_t *)b].name);
}

static const gguf_kv *find_kv(const gguf_file *g, const char *key)
{
    if (!g || !key)
        return NULL;
    size_t klen = strlen(key);
    int64_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const gguf_kv *kv = &g->kv[g->kv_sorted[mid]];
        int r = cmp_bytes(kv->key, kv->key_len, (const uint8_t *)key, klen);
        if (r == 0)
            return kv;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---- parse ---------------------------------------------------------------- */

static mop_status parse_header(cursor *c, gguf_file *g, uint64_t *n_tensors, uint64_t *n_kv)
{
    MOP_TRY(need(c, 4, "magic"));
    if (memcmp(c->p, "GGUF", 4) != 0)
        return mop_fail(MOP_E_FORMAT, "%s%snot a GGUF file (magic %02x %02x %02x %02x)", c->what,
                        c->sep, c->p[0], c->p[1], c->p[2], c->p[3]);
    c->pos = 4;
    MOP_TRY(rd_u32(c, &g->version, "version"));
    if (g->version == 1 || (g->version > 3 && g->version < 0x10000))
        return mop_fail(MOP_E_UNSUPPORTED, "%s%sGGUF version %u is not supported (2 or 3 only)",
                        c->what, c->sep, g->version);
    if (g->version != 2 && g->version != 3)
        return mop_fail(MOP_E_FORMAT, "%s%sinvalid GGUF version %u (a big-endian or corrupt file?)",
                        c->what, c->sep, g->version);
    MOP_TRY(rd_u64(c, n_tensors, "tensor count"));
    MOP_TRY(rd_u64(c, n_kv, "metadata count"));
    /* smallest entries: key(8) + type(4) + 1-byte value; name(8) + n_dims(4) + ne(8) + type(4) + offset(8) */
    if (*n_kv > remaining(c) / 13)
        return mop_fail(MOP_E_FORMAT, "%s%s%llu metadata entries cannot fit in %zu bytes",
                        c->what, c->sep, (unsigned long long)*n_kv, remaining(c));
    if (*n_tensors > remaining(c) / 32)
        return mop_fail(MOP_E_FORMAT, "%s%s%llu tensors cannot fit in %zu bytes", c->what, c->sep,
                        (unsigned long long)*n_tensors, remaining(c));
    return MOP_OK;
}

static mop_status parse_kvs(cursor *c, gguf_file *g, uint64_t n_kv)
{
    g->kv = mop_calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    g->kv_sorted = mop_alloc(n_kv ? (size_t)n_kv * sizeof(int64_t) : 1);
    if (!g->kv || !g->kv_sorted)
        return mop_fail(MOP_E_NOMEM, "out of memory for %llu metadata entries",
                        (unsigned long long)n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        g->n_kv = (int64_t)i + 1; /* so gguf_free releases what this entry allocates */
        MOP_TRY(rd_str(c, &kv->key, &kv->key_len, "metadata key"));
        if (kv->key_len == 0 || memchr(kv->key, 0, kv->key_len))
            return mop_fail(MOP_E_FORMAT, "%s%smetadata entry %llu: empty key or NUL in key",
                            c->what, c->sep, (unsigned long long)i);
        MOP_TRY(rd_u32(c, &kv->type, "value type"));
        MOP_TRY(read_value(c, kv));
    }
    for (int64_t i = 0; i < g->n_kv; i++)
        g->kv_sorted[i] = i;
    sort_kv = g->kv;
    qsort(g->kv_sorted, (size_t)g->n_kv, sizeof(int64_t), cmp_kv_idx);
    for (int64_t i = 1; i < g->n_kv; i++) {
        const gguf_kv *a = &g->kv[g->kv_sorted[i - 1]], *b = &g->kv[g->kv_sorted[i]];
        if (cmp_bytes(a->key, a->key_len, b->key, b->key_len) == 0)
            return mop_fail(MOP_E_FORMAT, "%s%sduplicate metadata key %.*s", c->what, c->sep,
                            a->key_len > 200 ? 200 : (int)a->key_len, (const char *)a->key);
    }
    return MOP_OK;
}

static mop_status parse_alignment(cursor *c, gguf_file *g)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t a;
    int found;
    MOP_TRY(gguf_get_int(g, "general.alignment", &a, &found));
    if (!found)
        return MOP_OK;
    if (a <= 0 || a > (int64_t)1 << 30 || (a & (a - 1)) != 0)
        return mop_fail(MOP_E_FORMAT, "%s%sgeneral.alignment = %lld is not a power of two",
                        c->what, c->sep, (long long)a);
    g->alignment = (uint64_t)a;
    return MOP_OK;
}

/* Raw tensor entry before names are copied. */
typedef struct raw_name {
    const uint8_t *s;
    size_t len;
} raw_name;

static mop_status parse_tensor_info(cursor *c, gguf_file *g, int64_t i, raw_name *rn)
{
    mop_src_tensor *t = &g->tensors[i];
    MOP_TRY(rd_str(c, &rn->s, &rn->len, "tensor name"));
    const int nl = rn->len > 200 ? 200 : (int)rn->len;
    const char *nm = (const char *)rn->s;
    if (rn->len == 0 || memchr(rn->s, 0, rn->len))
        return mop_fail(MOP_E_FORMAT, "%s%stensor %lld: empty name or NUL in name", c->what,
                        c->sep, (long long)i);
    uint32_t n_dims;
    MOP_TRY(rd_u32(c, &n_dims, "tensor n_dims"));
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return mop_fail(MOP_E_FORMAT, "%s%stensor %.*s: %u dimensions (1 to %d supported)",
                        c->what, c->sep, nl, nm, n_dims, GGUF_MAX_DIMS);
    uint64_t ne[GGUF_MAX_DIMS];
    int64_t count = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        MOP_TRY(rd_u64(c, &ne[d], "tensor dimension"));
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX)
            return mop_fail(MOP_E_FORMAT, "%s%stensor %.*s: dimension %u is %llu", c->what,
                            c->sep, nl, nm, d, (unsigned long long)ne[d]);
        if (__builtin_mul_overflow(count, (int64_t)ne[d], &count))
            return mop_fail(MOP_E_FORMAT, "%s%stensor %.*s: element count overflows", c->what,
                            c->sep, nl, nm);
    }
    uint32_t type;
    MOP_TRY(rd_u32(c, &type, "tensor type"));
    MOP_TRY(rd_u64(c, &g->offsets[i], "tensor offset"));
    if (!mop_ftype_name((int32_t)type))
        return mop_fail(MOP_E_UNSUPPORTED,
                        "%s%stensor %.*s: type id %u is not supported (F32, F16, BF16, Q8_0, "
                        "Q4_0, Q4_1, I8 are)",
                        c->what, c->sep, nl, nm, type);
    int64_t block = mop_ftype_block((int32_t)type);
    if ((int64_t)ne[0] % block != 0)
        return mop_fail(MOP_E_FORMAT,
                        "%s%stensor %.*s: row length %llu is not a multiple of the %s block (%lld)",
                        c->what, c->sep, nl, nm, (unsigned long long)ne[0],
                        mop_ftype_name((int32_t)type), (long long)block);
    t->nbytes = mop_ftype_nbytes((int32_t)type, count);
    if (t->nbytes == 0)
        return mop_fail(MOP_E_FORMAT, "%s%stensor %.*s: byte size of %lld elements overflows",
                        c->what, c->sep, nl, nm, (long long)count);
    t->ftype = (int32_t)type;
    t->n_dims = (int32_t)n_dims;
    for (uint32_t d = 0; d < n_dims; d++)
        t->dims[d] = (int64_t)ne[n_dims - 1 - d];
    for (uint32_t d = n_dims; d < GGUF_MAX_DIMS; d++)
        t->dims[d] = 1;
    return MOP_OK;
}

static _Thread_local const uint64_t *sort_off;

static int cmp_offset_idx(const void *a, const void *b)
{
    uint64_t x = sort_off[*(const int64_t *)a], y = sort_off[*(const int64_t *)b];
    return x < y ? -1 : x > y;
}

static mop_status parse_tensors(cursor *c, gguf_file *g, uint64_t n_tensors)
{
    size_t n = n_tensors ? (size_t)n_tensors : 1;
    g->tensors = mop_calloc(n, sizeof *g->tensors);
    g->offsets = mop_calloc(n, sizeof *g->offsets);
    g->t_sorted = mop_alloc(n * sizeof(int64_t));
    raw_name *rn = mop_alloc(n * sizeof *rn);
    mop_status st = MOP_OK;
    if (!g->tensors || !g->offsets || !g->t_sorted || !rn)
        st = mop_fail(MOP_E_NOMEM, "out of memory for %llu tensors",
                      (unsigned long long)n_tensors);
    for (uint64_t i = 0; st == MOP_OK && i < n_tensors; i++)
        st = parse_tensor_info(c, g, (int64_t)i, &rn[i]);
    if (st == MOP_OK) {
        g->n_tensors = (int64_t)n_tensors;
        /* names: one NUL-terminated arena; its size is bounded by the image */
        size_t total = 1;
        for (int64_t i = 0; i < g->n_tensors; i++)
            total += rn[i].len + 1;
        g->names = mop_alloc(total);
        if (!g->names)
            st = mop_fail(MOP_E_NOMEM, "out of memory for tensor names");
    }
    if (st == MOP_OK) {
        size_t at = 0;
        for (int64_t i = 0; i < g->n_tensors; i++) {
            memcpy(g->names + at, rn[i].s, rn[i].len);
            g->names[at + rn[i].len] = '\0';
            g->tensors[i].name = g->tensors[i].file_name = g->names + at;
            at += rn[i].len + 1;
        }
    }
    mop_free(rn);
    return st;
}

static mop_status check_tensors(cursor *c, gguf_file *g)
{
    /* unique names */
    for (int64_t i = 0; i < g->n_tensors; i++)
        g->t_sorted[i] = i;
    sort_t = g->tensors;
    qsort(g->t_sorted, (size_t)g->n_tensors, sizeof(int64_t), cmp_t_idx);
    for (int64_t i = 1; i < g->n_tensors; i++)
        if (strcmp(g->tensors[g->t_sorted[i - 1]].name, g->tensors[g->t_sorted[i]].name) == 0)
            return mop_fail(MOP_E_FORMAT, "%s%sduplicate tensor name %s", c->what, c->sep,
                            g->tensors[g->t_sorted[i]].name);
    if (g->n_tensors == 0)
        return MOP_OK;

    /* the data section starts at the next multiple of the alignment */
    uint64_t start = c->pos, a = g->alignment;
    if (start > UINT64_MAX - (a - 1))
        return mop_fail(MOP_E_FORMAT, "%s%sdata section offset overflows", c->what, c->sep);
    start = (start + a - 1) / a * a;
    g->data_start = start;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        mop_src_tensor *t = &g->tensors[i];
        uint64_t off = g->offsets[i], begin, end;
        if (off % a != 0)
            return mop_fail(MOP_E_FORMAT,
                            "%s%stensor %s: data offset %llu is not a multiple of the alignment "
                            "%llu",
                            c->what, c->sep, t->name, (unsigned long long)off,
                            (unsigned long long)a);
        if (__builtin_add_overflow(start, off, &begin) ||
            __builtin_add_overflow(begin, t->nbytes, &end))
            return mop_fail(MOP_E_FORMAT, "%s%stensor %s: data offset %llu overflows", c->what,
                            c->sep, t->name, (unsigned long long)off);
        if (end > c->size)
            return mop_fail(MOP_E_FORMAT,
                            "%s%stensor %s: data [%llu, %llu) beyond end of file (%zu bytes)",
                            c->what, c->sep, t->name, (unsigned long long)begin,
                            (unsigned long long)end, c->size);
        t->data = c->p + begin;
    }
    /* no two tensors share bytes: sort by offset, compare neighbours */
    int64_t *by_off = mop_alloc((size_t)g->n_tensors * sizeof *by_off);
    if (!by_off)
        return mop_fail(MOP_E_NOMEM, "out of memory checking %lld tensors",
                        (long long)g->n_tensors);
    for (int64_t i = 0; i < g->n_tensors; i++)
        by_off[i] = i;
    sort_off = g->offsets;
    qsort(by_off, (size_t)g->n_tensors, sizeof *by_off, cmp_offset_idx);
    mop_status st = MOP_OK;
    for (int64_t i = 1; i < g->n_tensors && st == MOP_OK; i++) {
        int64_t p = by_off[i - 1], q = by_off[i];
        if (g->offsets[p] + g->tensors[p].nbytes > g->offsets[q])
            st = mop_fail(MOP_E_FORMAT, "%s%stensors %s and %s overlap at data offset %llu",
                          c->what, c->sep, g->tensors[p].name, g->tensors[q].name,
                          (unsigned long long)g->offsets[q]);
    }
    mop_free(by_off);
    return st;
}

mop_status gguf_parse(const void *data, size_t size, const char *what, gguf_file **out)
{
    MOP_CHECK_ARG(out && (data || size == 0));
    cursor c = {data, size, 0, what ? what : "", what && *what ? ": " : ""};
    gguf_file *g = mop_calloc(1, sizeof *g);
    if (!g)
        return mop_fail(MOP_E_NOMEM, "%s%sout of memory", c.what, c.sep);
    g->base = data;
    g->size = size;
    uint64_t n_tensors = 0, n_kv = 0;
    mop_status st = parse_header(&c, g, &n_tensors, &n_kv);
    if (st == MOP_OK)
        st = parse_kvs(&c, g, n_kv);
    if (st == MOP_OK)
        st = parse_alignment(&c, g);
    if (st == MOP_OK)
        st = parse_tensors(&c, g, n_tensors);
    if (st == MOP_OK)
        st = check_tensors(&c, g);
    if (st != MOP_OK) {
        gguf_free(g);
        return st;
    }
    *out = g;
    return MOP_OK;
}

void gguf_free(gguf_file *g)
{
    if (!g)
        return;
    for (int64_t i = 0; g->kv && i < g->n_kv; i++)
        mop_free((void *)g->kv[i].arr.string_offsets);
    mop_free(g->kv);
    mop_free(g->kv_sorted);
    mop_free(g->tensors);
    mop_free(g->offsets);
    mop_free(g->t_sorted);
    mop_free(g->names);
    mop_free(g);
}

uint32_t gguf_version(const gguf_file *g)
{
    return g ? g->version : 0;
}

/* ---- getters ---------------------------------------------------------------- */

static const char *type_name(uint32_t t)
{
    static const char *names[] = {"uint8", "int8",   "uint16", "int16", "uint32",
                                  "int32", "float32", "bool",  "string", "array",
                                  "uint64", "int64",  "float64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static mop_status wrong_type(const char *key, uint32_t t, const char *want)
{
    return mop_fail(MOP_E_FORMAT, "metadata %s: is %s, expected %s", key, type_name(t), want);
}

mop_status gguf_get_int(const gguf_file *g, const char *key, int64_t *out, int *found)
{
    MOP_CHECK_ARG(g && key && out && found);
    const gguf_kv *kv = find_kv(g, key);
    *found = 0;
    if (!kv)
        return MOP_OK;
    const uint8_t *p = kv->val;
    int64_t v;
    switch (kv->type) {
    case GGUF_TYPE_UINT8: v = p[0]; break;
    case GGUF_TYPE_INT8: v = (int8_t)p[0]; break;
    case GGUF_TYPE_UINT16: v = mop_get_le16(p); break;
    case GGUF_TYPE_INT16: v = (int16_t)mop_get_le16(p); break;
    case GGUF_TYPE_UINT32: v = mop_get_le32(p); break;
    case GGUF_TYPE_INT32: v = (int32_t)mop_get_le32(p); break;
    case GGUF_TYPE_INT64: v = (int64_t)mop_get_le64(p); break;
    case GGUF_TYPE_UINT64:
        if (mop_get_le64(p) > (uint64_t)INT64_MAX)
            return mop_fail(MOP_E_FORMAT, "metadata %s: value %llu is out of range", key,
                            (unsigned long long)mop_get_le64(p));
        v = (int64_t)mop_get_le64(p);
        break;
    default: return wrong_type(key, kv->type, "an integer");
    }
    *out = v;
    *found = 1;
    return MOP_OK;
}

mop_status gguf_get_float(const gguf_file *g, const char *key, double *out, int *found)
{
    MOP_CHECK_ARG(g && key && out && found);
    const gguf_kv *kv = find_kv(g, key);
    *found = 0;
    if (!kv)
        return MOP_OK;
    if (kv->type == GGUF_TYPE_FLOAT32) {
        uint32_t u = mop_get_le32(kv->val);
        float f;
        memcpy(&f, &u, sizeof f);
        *out = f;
    } else if (kv->type == GGUF_TYPE_FLOAT64) {
        uint64_t u = mop_get_le64(kv->val);
        double d;
        memcpy(&d, &u, sizeof d);
        *out = d;
    } else {
        return wrong_type(key, kv->type, "a float");
    }
    *found = 1;
    return MOP_OK;
}

mop_status gguf_get_bool(const gguf_file *g, const char *key, int *out, int *found)
{
    MOP_CHECK_ARG(g && key && out && found);
    const gguf_kv *kv = find_kv(g, key);
    *found = 0;
    if (!kv)
        return MOP_OK;
    if (kv->type != GGUF_TYPE_BOOL)
        return wrong_type(key, kv->type, "a bool");
    *out = kv->val[0] != 0;
    *found = 1;
    return MOP_OK;
}

mop_status gguf_get_str(const gguf_file *g, const char *key, const char **s, size_t *len,
                        int *found)
{
    MOP_CHECK_ARG(g && key && s && len && found);
    const gguf_kv *kv = find_kv(g, key);
    *found = 0;
    if (!kv)
        return MOP_OK;
    if (kv->type != GGUF_TYPE_STRING)
        return wrong_type(key, kv->type, "a string");
    *len = (size_t)mop_get_le64(kv->val);
    *s = (const char *)kv->val + 8;
    *found = 1;
    return MOP_OK;
}

mop_status gguf_get_array(const gguf_file *g, const char *key, gguf_array *out, int *found)
{
    MOP_CHECK_ARG(g && key && out && found);
    const gguf_kv *kv = find_kv(g, key);
    *found = 0;
    if (!kv)
        return MOP_OK;
    if (kv->type != GGUF_TYPE_ARRAY)
        return wrong_type(key, kv->type, "an array");
    *out = kv->arr;
    *found = 1;
    return MOP_OK;
}

mop_status gguf_array_str(const gguf_array *a, uint64_t i, const char **s, size_t *len)
{
    MOP_CHECK_ARG(a && s && len);
    if (a->elem_type != GGUF_TYPE_STRING || !a->string_offsets)
        return mop_fail(MOP_E_FORMAT, "array of %s read as strings", type_name((uint32_t)a->elem_type));
    if (i >= a->n)
        return mop_fail(MOP_E_RANGE, "string array index %llu out of range (%llu elements)",
                        (unsigned long long)i, (unsigned long long)a->n);
    const uint8_t *p = (const uint8_t *)a->data + a->string_offsets[i];
    *len = (size_t)mop_get_le64(p);
    *s = (const char *)p + 8;
    return MOP_OK;
}

int64_t gguf_n_tensors(const gguf_file *g)
{
    return g ? g->n_tensors : 0;
}

const mop_src_tensor *gguf_tensor(const gguf_file *g, int64_t i)
{
    if (!g || i < 0 || i >= g->n_tensors)
        return NULL;
    return &g->tensors[i];
}

const mop_src_tensor *gguf_find_tensor(const gguf_file *g, const char *name)
{
    if (!g || !name)
        return NULL;
    int64_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const mop_src_tensor *t = &g->tensors[g->t_sorted[mid]];
        int r = strcmp(t->name, name);
        if (r == 0)
            return t;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}
