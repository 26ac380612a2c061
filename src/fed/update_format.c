/* Update blobs: serialize and parse (layout in docs/FORMAT.md, "Update blobs").
 *
 *   0   4  magic "MOPU"
 *   4   4  u32 version (1)
 *   8   4  u32 kind (0 delta, 1 full)
 *  12   4  u32 n_meta
 *  16   8  i64 round
 *  24   8  u64 client_id
 *  32   8  f64 n_samples
 *  40   4  u32 n_tensors
 *  44   4  u32 reserved, 0
 *  48      n_meta × { u32 key_len, key, u32 value_len, value }
 *          n_tensors × { u32 name_len, name, u32 n_dims, i64 dims[n_dims] }
 *          payload: every tensor's f32 values, in table order
 *  n−32 32 SHA-256 of bytes [0, n − 32)
 *
 * All integers and floats little-endian. Parsing checks, in this order:
 * structure and exact length (MOP_E_FORMAT, version: MOP_E_UNSUPPORTED),
 * the checksum (MOP_E_CHECKSUM), then the content (names, duplicates,
 * NaN/Inf, n_samples: MOP_E_FORMAT). */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include <sodium.h>

#include "byte_order.h"
#include "fed.h"
#include "internal.h"

#define FMT_MAGIC "MOPU"
#define FMT_VERSION 1u
#define FMT_HEADER 48u
#define FMT_HASH 32u

/* ---- libsodium, initialised once ---- */
static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_status = -1;

static void sodium_init_once(void)
{
    sodium_status = sodium_init() < 0 ? -1 : 0;
}

static mop_status fed_sodium_ready(void)
{
    pthread_once(&sodium_once, sodium_init_once);
    if (sodium_status != 0)
        return mop_fail(MOP_E_INTERNAL, "libsodium: sodium_init() failed");
    return MOP_OK;
}

/* ---- little-endian writer ---- */
static size_t serialized_size(const mop_update *u)
{
    size_t n = FMT_HEADER;
    for (int32_t i = 0; i < u->n_meta; i++)
        n += 8 + strlen(u->meta_key[i]) + strlen(u->meta_value[i]);
    for (int32_t i = 0; i < u->n_tensors; i++)
        n += 8 + strlen(u->tensors[i].name) + 8 * (size_t)u->tensors[i].n_dims +
             4 * (size_t)u->tensors[i].size;
    return n + FMT_HASH;
}

mop_status mop_update_serialize(const mop_update *u, uint8_t *buf, size_t cap, size_t *n_out)
{
    MOP_CHECK_ARG(u != NULL);
    MOP_CHECK_ARG(n_out != NULL);
    MOP_CHECK_ARG(buf != NULL || cap == 0);
    size_t n = serialized_size(u);
    *n_out = n;
    if (!buf)
        return MOP_OK;
    if (cap < n)
        return mop_fail(MOP_E_RANGE, "mop_update_serialize: buffer holds %zu bytes, need %zu", cap, n);
    MOP_TRY(fed_sodium_ready());

    uint8_t *p = buf;
    memcpy(p, FMT_MAGIC, 4);
    mop_put_le32(p + 4, FMT_VERSION);
    mop_put_le32(p + 8, (uint32_t)u->kind);
    mop_put_le32(p + 12, (uint32_t)u->n_meta);
    mop_put_le64(p + 16, (uint64_t)u->round);
    mop_put_le64(p + 24, u->client_id);
    uint64_t ns;
    memcpy(&ns, &u->n_samples, 8);
    mop_put_le64(p + 32, ns);
    mop_put_le32(p + 40, (uint32_t)u->n_tensors);
    mop_put_le32(p + 44, 0);
    p += FMT_HEADER;
    for (int32_t i = 0; i < u->n_meta; i++) {
        size_t kl = strlen(u->meta_key[i]), vl = strlen(u->meta_value[i]);
        mop_put_le32(p, (uint32_t)kl);
        memcpy(p + 4, u->meta_key[i], kl);
        p += 4 + kl;
        mop_put_le32(p, (uint32_t)vl);
        memcpy(p + 4, u->meta_value[i], vl);
        p += 4 + vl;
    }
    for (int32_t i = 0; i < u->n_tensors; i++) {
        const fed_tensor *t = &u->tensors[i];
        size_t nl = strlen(t->name);
        mop_put_le32(p, (uint32_t)nl);
        memcpy(p + 4, t->name, nl);
        p += 4 + nl;
        mop_put_le32(p, (uint32_t)t->n_dims);
        p += 4;
        for (int32_t d = 0; d < t->n_dims; d++, p += 8)
            mop_put_le64(p, (uint64_t)t->dims[d]);
    }
    for (int32_t i = 0; i < u->n_tensors; i++) {
        const fed_tensor *t = &u->tensors[i];
        for (int64_t j = 0; j < t->size; j++, p += 4) {
            uint32_t bits;
            memcpy(&bits, &t->data[j], 4);
            mop_put_le32(p, bits);
        }
    }
    crypto_hash_sha256(p, buf, (unsigned long long)(p - buf));
    return MOP_OK;
}

/* ---- parsing ---- */

typedef struct reader {
    const uint8_t *buf;
    size_t n, pos;
} reader;

/* Take @p len bytes, or fail with a message naming @p what. */
static mop_status take(reader *r, size_t len, const char *what, const uint8_t **out)
{
    if (len > r->n - r->pos)
        return mop_fail(MOP_E_FORMAT, "update blob: truncated in %s at byte %zu (needs %zu more, %zu left)",
                        what, r->pos, len, r->n - r->pos);
    *out = r->buf + r->pos;
    r->pos += len;
    return MOP_OK;
}

static mop_status take_u32(reader *r, const char *what, uint32_t *v)
{
    const uint8_t *p = NULL;
    MOP_TRY(take(r, 4, what, &p));
    *v = mop_get_le32(p);
    return MOP_OK;
}

/* A length-prefixed string: [min, max] bytes, valid UTF-8, no NUL. Returns a
 * pointer into the buffer (not terminated) and its length. */
static mop_status take_str(reader *r, const char *what, uint32_t min, uint32_t max,
                           const uint8_t **s, uint32_t *len)
{
    MOP_TRY(take_u32(r, what, len));
    if (*len < min || *len > max)
        return mop_fail(MOP_E_FORMAT, "update blob: %s length %u at byte %zu not in [%u, %u]", what,
                        (unsigned)*len, r->pos - 4, (unsigned)min, (unsigned)max);
    MOP_TRY(take(r, *len, what, s));
    if (!fed_utf8_ok((const char *)*s, *len))
        return mop_fail(MOP_E_FORMAT, "update blob: %s at byte %zu is not valid UTF-8 (or holds NUL)",
                        what, r->pos - *len);
    return MOP_OK;
}

static char *dup_n(const uint8_t *s, size_t len)
{
    char *c = mop_alloc(len + 1);
    if (c) {
        memcpy(c, s, len);
        c[len] = 0;
    }
    return c;
}

typedef struct table_entry {
    const uint8_t *name;
    uint32_t name_len;
    int32_t n_dims;
    int64_t dims[FED_MAX_DIMS];
    size_t size;
} table_entry;

static mop_status parse_into(const uint8_t *buf, size_t n, mop_update **out, table_entry **table_out);

mop_status mop_update_parse(const uint8_t *buf, size_t n, mop_update **out)
{
    MOP_CHECK_ARG(buf != NULL || n == 0);
    MOP_CHECK_ARG(out != NULL);
    table_entry *table = NULL;
    mop_status s = parse_into(buf, n, out, &table);
    mop_free(table);
    return s;
}

static mop_status parse_into(const uint8_t *buf, size_t n, mop_update **out, table_entry **table_out)
{
    reader r = {buf, n, 0};
    const uint8_t *h = NULL;
    if (n < 8)
        return mop_fail(MOP_E_FORMAT, "update blob: %zu bytes, too short for magic and version", n);
    if (memcmp(buf, FMT_MAGIC, 4) != 0)
        return mop_fail(MOP_E_FORMAT, "update blob: bad magic (expected \"MOPU\")");
    uint32_t version = mop_get_le32(buf + 4);
    if (version != FMT_VERSION)
        return mop_fail(MOP_E_UNSUPPORTED, "update blob: version %u not supported (this library reads %u)",
                        (unsigned)version, FMT_VERSION);
    MOP_TRY(take(&r, FMT_HEADER, "header", &h));
    uint32_t kind = mop_get_le32(h + 8), n_meta = mop_get_le32(h + 12);
    int64_t round = (int64_t)mop_get_le64(h + 16);
    uint64_t client_id = mop_get_le64(h + 24), ns_bits = mop_get_le64(h + 32);
    uint32_t n_tensors = mop_get_le32(h + 40), reserved = mop_get_le32(h + 44);
    double n_samples;
    memcpy(&n_samples, &ns_bits, 8);
    if (kind > 1)
        return mop_fail(MOP_E_FORMAT, "update blob: kind %u (expected 0 delta or 1 full)", (unsigned)kind);
    if (reserved != 0)
        return mop_fail(MOP_E_FORMAT, "update blob: reserved header field is %u, expected 0",
                        (unsigned)reserved);
    if (n_meta > FED_MAX_META)
        return mop_fail(MOP_E_FORMAT, "update blob: %u metadata entries (at most %d)", (unsigned)n_meta,
                        FED_MAX_META);
    if (n_tensors > FED_MAX_TENSORS)
        return mop_fail(MOP_E_FORMAT, "update blob: %u tensors (at most %d)", (unsigned)n_tensors,
                        FED_MAX_TENSORS);

    /* metadata: remember where it is, copy after the checksum */
    size_t meta_pos = r.pos;
    for (uint32_t i = 0; i < n_meta; i++) {
        const uint8_t *s;
        uint32_t len;
        MOP_TRY(take_str(&r, "metadata key", 1, FED_MAX_NAME, &s, &len));
        MOP_TRY(take_str(&r, "metadata value", 0, FED_MAX_META_VALUE, &s, &len));
    }

    /* each table entry takes at least 17 bytes: bound the allocation by n */
    if (n_tensors > (r.n - r.pos) / 17 + 1)
        return mop_fail(MOP_E_FORMAT, "update blob: %u tensors cannot fit in %zu bytes",
                        (unsigned)n_tensors, n);
    table_entry *table = mop_calloc(n_tensors ? n_tensors : 1, sizeof *table);
    if (!table)
        return mop_fail(MOP_E_NOMEM, "update blob: out of memory for %u tensors", (unsigned)n_tensors);
    *table_out = table;
    size_t payload = 0;
    for (uint32_t i = 0; i < n_tensors; i++) {
        table_entry *e = &table[i];
        uint32_t nd;
        MOP_TRY(take_str(&r, "tensor name", 1, FED_MAX_NAME, &e->name, &e->name_len));
        MOP_TRY(take_u32(&r, "tensor n_dims", &nd));
        if (nd < 1 || nd > FED_MAX_DIMS)
            return mop_fail(MOP_E_FORMAT, "update blob: tensor %u (%.*s): n_dims %u not in [1, %d]",
                            (unsigned)i, (int)e->name_len, (const char *)e->name, (unsigned)nd,
                            FED_MAX_DIMS);
        e->n_dims = (int32_t)nd;
        e->size = 1;
        for (uint32_t d = 0; d < nd; d++) {
            const uint8_t *p = NULL;
            MOP_TRY(take(&r, 8, "tensor dims", &p));
            int64_t v = (int64_t)mop_get_le64(p);
            if (v < 1 || !mop_mul_ok(e->size, (size_t)v, &e->size) || e->size > ((size_t)1 << 40))
                return mop_fail(MOP_E_FORMAT, "update blob: tensor %.*s: dim %u is %lld (must be >= 1, product at most 2^40)",
                                (int)e->name_len, (const char *)e->name, (unsigned)d, (long long)v);
            e->dims[d] = v;
        }
        if (!mop_add_ok(payload, e->size, &payload))
            return mop_fail(MOP_E_FORMAT, "update blob: payload size overflows");
    }
    size_t expect;
    if (!mop_mul_ok(payload, 4, &expect) || !mop_add_ok(expect, r.pos, &expect) ||
        !mop_add_ok(expect, FMT_HASH, &expect))
        return mop_fail(MOP_E_FORMAT, "update blob: payload size overflows");
    if (expect > n)
        return mop_fail(MOP_E_FORMAT, "update blob: truncated: header and tensor table announce %zu bytes, got %zu",
                        expect, n);
    if (expect < n)
        return mop_fail(MOP_E_FORMAT, "update blob: %zu trailing bytes after the checksum (expected %zu bytes in all)",
                        n - expect, expect);

    MOP_TRY(fed_sodium_ready());
    uint8_t digest[FMT_HASH];
    crypto_hash_sha256(digest, buf, (unsigned long long)(n - FMT_HASH));
    if (sodium_memcmp(digest, buf + n - FMT_HASH, FMT_HASH) != 0)
        return mop_fail(MOP_E_CHECKSUM, "update blob: SHA-256 mismatch (the blob is corrupt or was altered)");

    if (!(n_samples >= 0.0 && isfinite(n_samples)))
        return mop_fail(MOP_E_FORMAT, "update blob: n_samples is %g (must be finite and >= 0)", n_samples);
    if (round < 0)
        return mop_fail(MOP_E_FORMAT, "update blob: round is %lld (must be >= 0)", (long long)round);

    mop_update *u = NULL;
    MOP_TRY(mop_update_create((int32_t)kind, round, client_id, n_samples, &u));
    mop_status s = MOP_OK;
    r.pos = meta_pos;
    for (uint32_t i = 0; i < n_meta && s == MOP_OK; i++) {
        const uint8_t *k, *v;
        uint32_t kl, vl;
        s = take_str(&r, "metadata key", 1, FED_MAX_NAME, &k, &kl);
        if (s == MOP_OK)
            s = take_str(&r, "metadata value", 0, FED_MAX_META_VALUE, &v, &vl);
        if (s != MOP_OK)
            break;
        char *key = dup_n(k, kl), *val = dup_n(v, vl);
        if (!key || !val) {
            s = mop_fail(MOP_E_NOMEM, "update blob: out of memory for metadata");
        } else {
            const char *prev;
            if (mop_update_get_meta(u, key, &prev) == MOP_OK)
                s = mop_fail(MOP_E_FORMAT, "update blob: duplicate metadata key %s", key);
            else
                s = mop_update_set_meta(u, key, val);
        }
        mop_free(key);
        mop_free(val);
    }
    const uint8_t *pay = buf + n - FMT_HASH - 4 * payload;
    for (uint32_t i = 0; i < n_tensors && s == MOP_OK; i++) {
        const table_entry *e = &table[i];
        char *name = dup_n(e->name, e->name_len);
        float *data = mop_alloc(e->size * sizeof *data);
        if (!name || !data) {
            mop_free(name);
            mop_free(data);
            s = mop_fail(MOP_E_NOMEM, "update blob: out of memory for tensor %u", (unsigned)i);
            break;
        }
        for (size_t j = 0; j < e->size; j++, pay += 4) {
            uint32_t bits = mop_get_le32(pay);
            memcpy(&data[j], &bits, 4);
            if (!isfinite(data[j]) && s == MOP_OK)
                s = mop_fail(MOP_E_FORMAT, "update blob: tensor %s: value %zu is %g (NaN/Inf not allowed)",
                             name, j, (double)data[j]);
        }
        if (s == MOP_OK) {
            if (fed_update_find(u, name)) {
                s = mop_fail(MOP_E_FORMAT, "update blob: duplicate tensor name %s", name);
            } else {
                s = fed_update_add_owned(u, name, data, e->n_dims, e->dims);
            }
        }
        if (s != MOP_OK)
            mop_free(data);
        mop_free(name);
    }
    if (s != MOP_OK) {
        mop_update_free(u);
        return s;
    }
    *out = u;
    return MOP_OK;
}
