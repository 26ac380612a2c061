/* Byte stream of a packed sparse weight, for saving pruned models (layout in
 * sparse.h and docs/FORMAT.md). Little-endian; every count, size and index
 * is checked against the input before anything is allocated, so arbitrary
 * bytes give MOP_E_FORMAT with the first problem found. */
#include <string.h>

#include "byte_order.h"
#include "sparse.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sparse_serialize.c assumes a little-endian host"
#endif

#define HEADER_BYTES 32
#define FORMAT_VERSION 1
enum { FMT_NM = 1, FMT_BITMASK = 2, FMT_BLOCKED = 3 };

static void put(uint8_t **p, const void *src, size_t n)
{
    if (n)
        memcpy(*p, src, n);
    *p += n;
}

/* a·b + c with overflow → 0. */
static int mad_ok(size_t a, size_t b, size_t c, size_t *out)
{
    size_t ab;
    return mop_mul_ok(a, b, &ab) && mop_add_ok(ab, c, out);
}

mop_status sparse_weight_serialize_size(const mop_weight *w, size_t *out)
{
    MOP_CHECK_ARG(out && sparse_is_sparse(w));
    size_t r = (size_t)w->rows;
    if (w->ops == &sparse_nm_ops) {
        const sparse_nm *p = w->impl;
        *out = HEADER_BYTES + 8 + r * (size_t)p->slots * 4 + r * (size_t)p->idx_stride;
    } else if (w->ops == &sparse_bitmask_ops) {
        const sparse_bitmask *p = w->impl;
        *out = HEADER_BYTES + 8 + r * (size_t)p->mask_stride + (size_t)p->nnz * 4;
    } else {
        const sparse_blocked *p = w->impl;
        *out = HEADER_BYTES + 8 + r * (size_t)p->nblk * 2 + (size_t)p->nnz * 5;
    }
    return MOP_OK;
}

mop_status sparse_weight_serialize(const mop_weight *w, void *buf, size_t cap)
{
    size_t need = 0;
    MOP_CHECK_ARG(buf);
    MOP_TRY(sparse_weight_serialize_size(w, &need));
    if (cap < need)
        return mop_fail(MOP_E_RANGE, "sparse_weight_serialize: buffer of %zu bytes, need %zu",
                        cap, need);
    uint8_t *o = buf;
    const uint32_t version = FORMAT_VERSION, zero = 0;
    const uint32_t fmt = (uint32_t)((const sparse_head *)w->impl)->fmt->id;
    const size_t r = (size_t)w->rows;
    put(&o, "MOPS", 4);
    put(&o, &version, 4);
    put(&o, &fmt, 4);
    put(&o, &zero, 4);
    put(&o, &w->rows, 8);
    put(&o, &w->cols, 8);
    if (fmt == FMT_NM) {
        const sparse_nm *p = w->impl;
        const uint32_t nm[2] = {(uint32_t)p->n, (uint32_t)p->m};
        put(&o, nm, 8);
        put(&o, p->vals, r * (size_t)p->slots * 4);
        put(&o, p->idx, r * (size_t)p->idx_stride);
    } else if (fmt == FMT_BITMASK) {
        const sparse_bitmask *p = w->impl;
        put(&o, &p->nnz, 8);
        put(&o, p->mask, r * (size_t)p->mask_stride);
        put(&o, p->vals, (size_t)p->nnz * 4);
    } else {
        const sparse_blocked *p = w->impl;
        put(&o, &p->nnz, 8);
        put(&o, p->cnt, r * (size_t)p->nblk * 2);
        put(&o, p->idx, (size_t)p->nnz);
        put(&o, p->vals, (size_t)p->nnz * 4);
    }
    return MOP_OK;
}

static mop_status size_check(size_t need, size_t size, const char *what)
{
    if (need != size)
        return mop_fail(MOP_E_FORMAT, "sparse weight (%s): %zu bytes, expected exactly %zu", what,
                        size, need);
    return MOP_OK;
}

/* MOP_E_FORMAT at the first NaN/Inf among the n little-endian F32 values at
 * v (unaligned): a model's weights must be finite, as the dense loader
 * checks too. */
static mop_status finite_values(const uint8_t *v, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if ((mop_get_le32(v + 4 * i) & 0x7f800000u) == 0x7f800000u)
            return mop_fail(MOP_E_FORMAT, "sparse weight (%s): value %zu is %s; a model's "
                            "weights must be finite", what, i,
                            (mop_get_le32(v + 4 * i) & 0x007fffffu) ? "NaN" : "infinite");
    return MOP_OK;
}

static mop_status load_nm(mop_weight *out, const uint8_t *b, size_t size, int64_t rows,
                          int64_t cols)
{
    if (size < HEADER_BYTES + 8)
        return mop_fail(MOP_E_FORMAT, "sparse weight (nm): %zu bytes, header needs %d", size,
                        HEADER_BYTES + 8);
    const uint32_t n = mop_get_le32(b + HEADER_BYTES), m = mop_get_le32(b + HEADER_BYTES + 4);
    if (n < 1 || m > 16 || n >= m)
        return mop_fail(MOP_E_FORMAT, "sparse weight (nm): %u:%u not in 1 <= N < M <= 16", n, m);
    const size_t groups = (size_t)(cols + m - 1) / m, slots = groups * n, stride = (slots + 1) / 2;
    size_t vbytes, need;
    if (!mad_ok((size_t)rows, slots * 4, 0, &vbytes) ||
        !mad_ok((size_t)rows, stride, vbytes + HEADER_BYTES + 8, &need))
        return mop_fail(MOP_E_FORMAT, "sparse weight (nm): %lldx%lld size overflows",
                        (long long)rows, (long long)cols);
    MOP_TRY(size_check(need, size, "nm"));
    const uint8_t *idx = b + HEADER_BYTES + 8 + vbytes;
    const size_t tail = (size_t)cols - (groups - 1) * m; /* width of the last group */
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *ix = idx + (size_t)r * stride;
        for (size_t s = 0; s < slots; s++) {
            unsigned v = (ix[s >> 1] >> ((s & 1) * 4)) & 15u;
            size_t width = s / n == groups - 1 ? tail : m;
            if (v >= width)
                return mop_fail(MOP_E_FORMAT,
                                "sparse weight (nm): row %lld slot %zu: index %u outside its "
                                "group of %zu columns",
                                (long long)r, s, v, width);
        }
        if ((slots & 1) && (ix[slots >> 1] >> 4) != 0)
            return mop_fail(MOP_E_FORMAT, "sparse weight (nm): row %lld: padding nibble not zero",
                            (long long)r);
    }
    MOP_TRY(finite_values(b + HEADER_BYTES + 8, vbytes / 4, "nm"));
    mop_weight w;
    MOP_TRY(nm_alloc(&w, rows, cols, (int)n, (int)m));
    sparse_nm *p = w.impl;
    memcpy(p->vals, b + HEADER_BYTES + 8, vbytes);
    memcpy(p->idx, idx, (size_t)rows * stride);
    nm_finish(&w);
    *out = w;
    return MOP_OK;
}

static mop_status load_bitmask(mop_weight *out, const uint8_t *b, size_t size, int64_t rows,
                               int64_t cols)
{
    if (size < HEADER_BYTES + 8)
        return mop_fail(MOP_E_FORMAT, "sparse weight (bitmask): %zu bytes, header needs %d",
                        size, HEADER_BYTES + 8);
    const uint64_t nnz = mop_get_le64(b + HEADER_BYTES);
    if (nnz > (uint64_t)rows * (uint64_t)cols)
        return mop_fail(MOP_E_FORMAT, "sparse weight (bitmask): %llu nonzeros in %lldx%lld",
                        (unsigned long long)nnz, (long long)rows, (long long)cols);
    const size_t stride = (size_t)(cols + 7) / 8;
    size_t need;
    if (!mad_ok((size_t)rows, stride, (size_t)nnz * 4 + HEADER_BYTES + 8, &need))
        return mop_fail(MOP_E_FORMAT, "sparse weight (bitmask): %lldx%lld size overflows",
                        (long long)rows, (long long)cols);
    MOP_TRY(size_check(need, size, "bitmask"));
    const uint8_t *mask = b + HEADER_BYTES + 8;
    const unsigned last = (unsigned)(cols % 8) ? (1u << (cols % 8)) - 1 : 0xFFu;
    uint64_t bits = 0;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *mr = mask + (size_t)r * stride;
        if (mr[stride - 1] & ~last)
            return mop_fail(MOP_E_FORMAT,
                            "sparse weight (bitmask): row %lld: bits set past column %lld",
                            (long long)r, (long long)cols);
        for (size_t j = 0; j < stride; j++)
            bits += (uint64_t)__builtin_popcount(mr[j]);
    }
    if (bits != nnz)
        return mop_fail(MOP_E_FORMAT,
                        "sparse weight (bitmask): mask has %llu bits set, header says %llu",
                        (unsigned long long)bits, (unsigned long long)nnz);
    MOP_TRY(finite_values(mask + (size_t)rows * stride, (size_t)nnz, "bitmask"));
    mop_weight w;
    MOP_TRY(bitmask_alloc(&w, rows, cols, (int64_t)nnz));
    sparse_bitmask *p = w.impl;
    memcpy(p->mask, mask, (size_t)rows * stride);
    if (nnz)
        memcpy(p->vals, mask + (size_t)rows * stride, (size_t)nnz * 4);
    bitmask_finish(&w);
    *out = w;
    return MOP_OK;
}

static mop_status load_blocked(mop_weight *out, const uint8_t *b, size_t size, int64_t rows,
                               int64_t cols)
{
    if (size < HEADER_BYTES + 8)
        return mop_fail(MOP_E_FORMAT, "sparse weight (blocked): %zu bytes, header needs %d",
                        size, HEADER_BYTES + 8);
    const uint64_t nnz = mop_get_le64(b + HEADER_BYTES);
    if (nnz > (uint64_t)rows * (uint64_t)cols)
        return mop_fail(MOP_E_FORMAT, "sparse weight (blocked): %llu nonzeros in %lldx%lld",
                        (unsigned long long)nnz, (long long)rows, (long long)cols);
    const size_t nblk = (size_t)(cols + SPARSE_BLOCK_COLS - 1) / SPARSE_BLOCK_COLS;
    size_t need;
    if (!mad_ok((size_t)rows, nblk * 2, (size_t)nnz * 5 + HEADER_BYTES + 8, &need))
        return mop_fail(MOP_E_FORMAT, "sparse weight (blocked): %lldx%lld size overflows",
                        (long long)rows, (long long)cols);
    MOP_TRY(size_check(need, size, "blocked"));
    const uint8_t *cnt = b + HEADER_BYTES + 8, *idx = cnt + (size_t)rows * nblk * 2;
    uint64_t k = 0;
    for (int64_t r = 0; r < rows; r++)
        for (size_t bl = 0; bl < nblk; bl++) {
            uint16_t c;
            memcpy(&c, cnt + ((size_t)r * nblk + bl) * 2, 2);
            const size_t width = MOP_MIN((size_t)SPARSE_BLOCK_COLS,
                                         (size_t)cols - bl * SPARSE_BLOCK_COLS);
            if (c > width)
                return mop_fail(MOP_E_FORMAT,
                                "sparse weight (blocked): row %lld block %zu: count %u > %zu "
                                "columns",
                                (long long)r, bl, (unsigned)c, width);
            if (c > nnz - k)
                return mop_fail(MOP_E_FORMAT,
                                "sparse weight (blocked): counts exceed the %llu nonzeros at row "
                                "%lld block %zu",
                                (unsigned long long)nnz, (long long)r, bl);
            for (unsigned j = 0; j < c; j++) {
                const unsigned ix = idx[k + j];
                if (ix >= width || (j > 0 && ix <= idx[k + j - 1]))
                    return mop_fail(MOP_E_FORMAT,
                                    "sparse weight (blocked): row %lld block %zu entry %u: index "
                                    "%u not increasing or >= %zu",
                                    (long long)r, bl, j, ix, width);
            }
            k += c;
        }
    if (k != nnz)
        return mop_fail(MOP_E_FORMAT, "sparse weight (blocked): counts sum to %llu, header says %llu",
                        (unsigned long long)k, (unsigned long long)nnz);
    MOP_TRY(finite_values(idx + nnz, (size_t)nnz, "blocked"));
    mop_weight w;
    MOP_TRY(blocked_alloc(&w, rows, cols, (int64_t)nnz));
    sparse_blocked *p = w.impl;
    memcpy(p->cnt, cnt, (size_t)rows * nblk * 2);
    if (nnz) {
        memcpy(p->idx, idx, (size_t)nnz);
        memcpy(p->vals, idx + nnz, (size_t)nnz * 4);
    }
    blocked_finish(&w);
    *out = w;
    return MOP_OK;
}

mop_status sparse_weight_deserialize(mop_weight *out, const void *buf, size_t size)
{
    MOP_CHECK_ARG(out && (buf || size == 0));
    const uint8_t *b = buf;
    if (size < HEADER_BYTES)
        return mop_fail(MOP_E_FORMAT, "sparse weight: %zu bytes, shorter than the %d-byte header",
                        size, HEADER_BYTES);
    if (memcmp(b, "MOPS", 4) != 0)
        return mop_fail(MOP_E_FORMAT, "sparse weight: bad magic (expected \"MOPS\")");
    const uint32_t version = mop_get_le32(b + 4), fmt = mop_get_le32(b + 8), reserved = mop_get_le32(b + 12);
    if (version != FORMAT_VERSION)
        return mop_fail(MOP_E_FORMAT, "sparse weight: version %u, this library reads %d", version,
                        FORMAT_VERSION);
    if (reserved != 0)
        return mop_fail(MOP_E_FORMAT, "sparse weight: reserved header word is %u, not 0",
                        reserved);
    const int64_t rows = (int64_t)mop_get_le64(b + 16), cols = (int64_t)mop_get_le64(b + 24);
    if (rows < 1 || cols < 1 || rows > SPARSE_MAX_DIM || cols > SPARSE_MAX_DIM)
        return mop_fail(MOP_E_FORMAT, "sparse weight: shape %lldx%lld out of range [1, 2^30]",
                        (long long)rows, (long long)cols);
    switch (fmt) {
    case FMT_NM:
        return load_nm(out, b, size, rows, cols);
    case FMT_BITMASK:
        return load_bitmask(out, b, size, rows, cols);
    case FMT_BLOCKED:
        return load_blocked(out, b, size, rows, cols);
    default:
        return mop_fail(MOP_E_FORMAT, "sparse weight: unknown format %u", fmt);
    }
}
