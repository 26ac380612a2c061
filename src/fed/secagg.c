/* Secure aggregation by pairwise additive masking (Bonawitz et al. 2017,
 * simplified: no secret sharing, no self-mask; dropout recovery by revealing
 * pairwise round keys). Key agreement X25519, key derivation BLAKE2b, mask
 * PRG ChaCha20: all libsodium. See mop_fed.h section B and docs/PRIVACY.md.
 *
 * Client i sends  y_i = enc(x_i) + Σ_{j>i} m_ij − Σ_{j<i} m_ij  (mod 2^bits),
 * so Σ_i y_i = Σ_i enc(x_i). Slot `length` of every vector encodes 0: a
 * nonzero sum there means the masks did not cancel. */
#include <math.h>
#include <string.h>

#include <sodium.h>

#include "byte_order.h"
#include "fed.h"
#include "internal.h"
#include "privacy.h"

#define SA_VERSION 1u
#define SA_HEADER 48u   /* masked blob header bytes */
#define SA_RHEADER 32u  /* recovery blob header bytes */
#define SA_RENTRY 36u   /* u32 index + 32-byte key */
#define SA_HASH 16u     /* BLAKE2b-128 checksum at the end of every blob */
#define SA_MAX_CLIENTS 65536
#define SA_MAX_LENGTH ((int64_t)1 << 31)


struct mop_secagg_client {
    secagg_cfg cfg;
    int32_t index;
    uint8_t pk[32], sk[32];
    uint8_t *keys;     /* (n, 32) round keys k_ij; own row zero */
    uint8_t *revealed; /* (n) 1 = key given to the server */
    int keys_set, masked;
};

struct mop_secagg_server {
    secagg_cfg cfg;
    uint64_t *acc;     /* (length + 1) running sum mod 2^bits */
    uint8_t *have;     /* (n) blob in the sum */
    uint8_t *dropped;  /* (n) named by a recovery */
    uint8_t **rev;     /* (n) per survivor: bitmap of the dropped j whose key it gave, or NULL */
};

/* ---- little-endian helpers ---- */
static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void secagg_checksum(uint8_t out[SA_HASH], const uint8_t *p, size_t n)
{
    crypto_generichash(out, SA_HASH, p, n, NULL, 0);
}

/* ---- parameters ---- */

/* first release (0.1.0) */
#define SECAGG_PARAMS_MIN MOP_SIZE_THROUGH(mop_secagg_params, min_survivors)

static void secagg_defaults(mop_secagg_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->n_clients = 0;
    d->round = 0;
    d->length = 0;
    d->ring_bits = 64;
    d->scale = 0x1p32f;
    d->clip_range = 256.0f;
    d->min_survivors = 2;
}

MOP_DEFINE_PARAMS_INIT(secagg, SECAGG_PARAMS_MIN)

mop_status secagg_cfg_from(secagg_cfg *c, const mop_secagg_params *params, const char *fn)
{
    if (!params)
        return mop_fail(MOP_E_INVALID_ARG, "%s: params is NULL (n_clients and length must be set)", fn);
    mop_secagg_params p;
    secagg_defaults(&p);
    MOP_READ_STRUCT(fn, &p, params, SECAGG_PARAMS_MIN);
    if (p.n_clients < 2 || p.n_clients > SA_MAX_CLIENTS)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n_clients must be in 2..%d, got %d", fn,
                        SA_MAX_CLIENTS, (int)p.n_clients);
    if (p.round < 0)
        return mop_fail(MOP_E_INVALID_ARG, "%s: round must be >= 0, got %lld", fn, (long long)p.round);
    if (p.length < 1 || p.length > SA_MAX_LENGTH)
        return mop_fail(MOP_E_INVALID_ARG, "%s: length must be in 1..2^31, got %lld", fn,
                        (long long)p.length);
    if (p.ring_bits != 32 && p.ring_bits != 64)
        return mop_fail(MOP_E_INVALID_ARG, "%s: ring_bits must be 32 or 64, got %d", fn,
                        (int)p.ring_bits);
    if (!(isfinite(p.scale) && p.scale > 0.0f))
        return mop_fail(MOP_E_INVALID_ARG, "%s: scale must be finite and > 0, got %g", fn,
                        (double)p.scale);
    if (!(isfinite(p.clip_range) && p.clip_range > 0.0f))
        return mop_fail(MOP_E_INVALID_ARG, "%s: clip_range must be finite and > 0, got %g", fn,
                        (double)p.clip_range);
    if (p.min_survivors < 2 || p.min_survivors > p.n_clients)
        return mop_fail(MOP_E_INVALID_ARG, "%s: min_survivors must be in 2..n_clients=%d, got %d",
                        fn, (int)p.n_clients, (int)p.min_survivors);
    /* The sum of n values of magnitude <= round(R·s) must not wrap: n·round(R·s) < 2^(bits−1). */
    double rs = (double)p.clip_range * (double)p.scale;
    uint64_t half = (uint64_t)1 << (p.ring_bits - 1);
    if (!(rs < 0x1p62) || (uint64_t)llround(rs) > (half - 1) / (uint64_t)p.n_clients)
        return mop_fail(MOP_E_RANGE,
                        "%s: n_clients %d × clip_range %g × scale %g does not fit the ring "
                        "Z_2^%d (needs < 2^%d)", fn, (int)p.n_clients, (double)p.clip_range,
                        (double)p.scale, (int)p.ring_bits, (int)p.ring_bits - 1);
    c->n = p.n_clients;
    c->bits = p.ring_bits;
    c->min_surv = p.min_survivors;
    c->round = p.round;
    c->length = p.length;
    c->scale = p.scale;
    c->range = p.clip_range;
    return MOP_OK;
}

static size_t secagg_masked_size(const secagg_cfg *c)
{
    return SA_HEADER + (size_t)(c->length + 1) * (size_t)(c->bits / 8) + SA_HASH;
}

/* ---- client ---- */

mop_status mop_secagg_client_create(const mop_secagg_params *params, int32_t index,
                                    mop_secagg_client **out)
{
    MOP_CHECK_ARG(out != NULL);
    *out = NULL;
    secagg_cfg cfg;
    MOP_TRY(secagg_cfg_from(&cfg, params, "mop_secagg_client_create"));
    if (index < 0 || index >= cfg.n)
        return mop_fail(MOP_E_INVALID_ARG, "mop_secagg_client_create: index %d not in 0..%d",
                        (int)index, (int)cfg.n - 1);
    if (sodium_init() < 0)
        return mop_fail(MOP_E_INTERNAL, "mop_secagg_client_create: sodium_init() failed");
    mop_secagg_client *c = mop_calloc(1, sizeof *c);
    uint8_t *keys = mop_calloc((size_t)cfg.n, 32);
    uint8_t *rev = mop_calloc((size_t)cfg.n, 1);
    if (!c || !keys || !rev) {
        mop_free(c);
        mop_free(keys);
        mop_free(rev);
        return mop_fail(MOP_E_NOMEM, "mop_secagg_client_create: out of memory");
    }
    c->cfg = cfg;
    c->index = index;
    c->keys = keys;
    c->revealed = rev;
    crypto_box_keypair(c->pk, c->sk); /* X25519, secret key from the OS CSPRNG */
    *out = c;
    return MOP_OK;
}

void mop_secagg_client_free(mop_secagg_client *c)
{
    if (!c)
        return;
    sodium_memzero(c->keys, (size_t)c->cfg.n * 32);
    mop_free(c->keys);
    mop_free(c->revealed);
    sodium_memzero(c, sizeof *c);
    mop_free(c);
}

mop_status mop_secagg_client_public_key(const mop_secagg_client *c, uint8_t *pk)
{
    MOP_CHECK_ARG(c != NULL);
    MOP_CHECK_ARG(pk != NULL);
    memcpy(pk, c->pk, 32);
    return MOP_OK;
}

/* k_ij = BLAKE2b-256(domain ‖ X25519(sk_i, pk_j) ‖ round ‖ n ‖ lo ‖ hi ‖ pk_lo ‖ pk_hi). */
static int secagg_round_key(uint8_t key[32], const mop_secagg_client *c, int32_t j,
                            const uint8_t *pk_j)
{
    static const char domain[] = "libmop-secagg-v1";
    uint8_t shared[crypto_scalarmult_BYTES], num[20];
    if (crypto_scalarmult(shared, c->sk, pk_j) != 0)
        return -1; /* low-order point: the shared secret would be all zeros */
    int32_t lo = MOP_MIN(c->index, j), hi = MOP_MAX(c->index, j);
    const uint8_t *pk_lo = lo == c->index ? c->pk : pk_j;
    const uint8_t *pk_hi = hi == c->index ? c->pk : pk_j;
    mop_put_le64(num, (uint64_t)c->cfg.round);
    mop_put_le32(num + 8, (uint32_t)c->cfg.n);
    mop_put_le32(num + 12, (uint32_t)lo);
    mop_put_le32(num + 16, (uint32_t)hi);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)domain, sizeof domain - 1);
    crypto_generichash_update(&st, shared, sizeof shared);
    crypto_generichash_update(&st, num, sizeof num);
    crypto_generichash_update(&st, pk_lo, 32);
    crypto_generichash_update(&st, pk_hi, 32);
    crypto_generichash_final(&st, key, 32);
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(&st, sizeof st);
    return 0;
}

mop_status mop_secagg_client_set_peer_keys(mop_secagg_client *c, const uint8_t *keys,
                                           size_t n_bytes)
{
    static const char *fn = "mop_secagg_client_set_peer_keys";
    MOP_CHECK_ARG(c != NULL);
    MOP_CHECK_ARG(keys != NULL);
    int32_t n = c->cfg.n;
    if (c->keys_set)
        return mop_fail(MOP_E_STATE, "%s: client %d: peer keys already set", fn, (int)c->index);
    if (n_bytes != (size_t)n * 32)
        return mop_fail(MOP_E_INVALID_ARG, "%s: %zu bytes of keys, expected 32 × %d = %zu", fn,
                        n_bytes, (int)n, (size_t)n * 32);
    if (sodium_memcmp(keys + (size_t)c->index * 32, c->pk, 32) != 0)
        return mop_fail(MOP_E_INVALID_ARG, "%s: slot %d does not hold this client's own public key",
                        fn, (int)c->index);
    for (int32_t a = 0; a < n; a++)
        for (int32_t b = a + 1; b < n; b++)
            if (memcmp(keys + (size_t)a * 32, keys + (size_t)b * 32, 32) == 0)
                return mop_fail(MOP_E_INVALID_ARG, "%s: clients %d and %d have the same public key",
                                fn, (int)a, (int)b);
    for (int32_t j = 0; j < n; j++) {
        if (j == c->index)
            continue;
        if (secagg_round_key(c->keys + (size_t)j * 32, c, j, keys + (size_t)j * 32) != 0) {
            sodium_memzero(c->keys, (size_t)n * 32);
            return mop_fail(MOP_E_INVALID_ARG, "%s: public key of client %d is a low-order point",
                            fn, (int)j);
        }
    }
    c->keys_set = 1;
    return MOP_OK;
}

mop_status mop_secagg_client_mask(mop_secagg_client *c, const float *x, int64_t n, uint8_t *buf,
                                  size_t cap, size_t *n_out)
{
    static const char *fn = "mop_secagg_client_mask";
    MOP_CHECK_ARG(c != NULL);
    MOP_CHECK_ARG(n_out != NULL);
    const secagg_cfg *cfg = &c->cfg;
    size_t size = secagg_masked_size(cfg);
    if (!buf && cap == 0) {
        *n_out = size;
        return MOP_OK;
    }
    MOP_CHECK_ARG(x != NULL);
    MOP_CHECK_ARG(buf != NULL);
    if (n != cfg->length)
        return mop_fail(MOP_E_SHAPE, "%s: vector of %lld floats, the round expects length %lld", fn,
                        (long long)n, (long long)cfg->length);
    if (!c->keys_set)
        return mop_fail(MOP_E_STATE, "%s: client %d: peer keys not set", fn, (int)c->index);
    if (c->masked)
        return mop_fail(MOP_E_STATE, "%s: client %d already masked an input this round "
                        "(a second one would reveal the difference)", fn, (int)c->index);
    if (cap < size)
        return mop_fail(MOP_E_RANGE, "%s: buffer of %zu bytes, the blob needs %zu", fn, cap, size);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return mop_fail(MOP_E_INVALID_ARG, "%s: x[%lld] = %g is not finite", fn, (long long)i,
                            (double)x[i]);
    size_t len = (size_t)n + 1;
    uint64_t *acc = mop_alloc(len * sizeof(uint64_t));
    if (!acc)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory (%zu ring elements)", fn, len);
    secagg_encode(acc, x, (size_t)n, cfg->scale, cfg->range, cfg->bits);
    acc[n] = 0; /* check slot */
    for (int32_t j = 0; j < cfg->n; j++)
        if (j != c->index)
            secagg_add_mask(acc, len, c->keys + (size_t)j * 32, j > c->index ? +1 : -1, cfg->bits);

    uint8_t *p = buf;
    memcpy(p, "MSAM", 4);
    mop_put_le32(p + 4, SA_VERSION);
    mop_put_le32(p + 8, (uint32_t)c->index);
    mop_put_le32(p + 12, (uint32_t)cfg->n);
    mop_put_le64(p + 16, (uint64_t)cfg->round);
    mop_put_le32(p + 24, (uint32_t)cfg->bits);
    mop_put_le32(p + 28, f32_bits(cfg->scale));
    mop_put_le32(p + 32, f32_bits(cfg->range));
    mop_put_le32(p + 36, 0);
    mop_put_le64(p + 40, (uint64_t)cfg->length);
    p += SA_HEADER;
    for (size_t i = 0; i < len; i++) {
        if (cfg->bits == 32) {
            mop_put_le32(p, (uint32_t)acc[i]);
            p += 4;
        } else {
            mop_put_le64(p, acc[i]);
            p += 8;
        }
    }
    secagg_checksum(p, buf, (size_t)(p - buf));
    sodium_memzero(acc, len * sizeof(uint64_t));
    mop_free(acc);
    c->masked = 1;
    *n_out = size;
    return MOP_OK;
}

mop_status mop_secagg_client_mask_update(mop_secagg_client *c, const mop_update *u, uint8_t *buf,
                                         size_t cap, size_t *n_out)
{
    static const char *fn = "mop_secagg_client_mask_update";
    MOP_CHECK_ARG(c != NULL);
    MOP_CHECK_ARG(u != NULL);
    MOP_CHECK_ARG(n_out != NULL);
    if (!buf && cap == 0)
        return mop_secagg_client_mask(c, NULL, 0, NULL, 0, n_out);
    int64_t total = 0;
    for (int32_t t = 0; t < u->n_tensors; t++)
        total += u->tensors[t].size;
    if (total != c->cfg.length)
        return mop_fail(MOP_E_SHAPE, "%s: the update holds %lld floats, the round expects %lld", fn,
                        (long long)total, (long long)c->cfg.length);
    float *flat = mop_alloc((size_t)total * sizeof(float));
    if (!flat)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    int64_t off = 0;
    for (int32_t t = 0; t < u->n_tensors; t++) {
        memcpy(flat + off, u->tensors[t].data, (size_t)u->tensors[t].size * sizeof(float));
        off += u->tensors[t].size;
    }
    mop_status s = mop_secagg_client_mask(c, flat, total, buf, cap, n_out);
    sodium_memzero(flat, (size_t)total * sizeof(float));
    mop_free(flat);
    return s;
}

mop_status mop_secagg_client_reveal(mop_secagg_client *c, const int32_t *dropped,
                                    int32_t n_dropped, uint8_t *buf, size_t cap, size_t *n_out)
{
    static const char *fn = "mop_secagg_client_reveal";
    MOP_CHECK_ARG(c != NULL);
    MOP_CHECK_ARG(n_out != NULL);
    MOP_CHECK_ARG(n_dropped >= 0 && n_dropped < c->cfg.n);
    MOP_CHECK_ARG(dropped != NULL || n_dropped == 0);
    int32_t n = c->cfg.n;
    size_t size = SA_RHEADER + (size_t)n_dropped * SA_RENTRY + SA_HASH;
    if (!buf && cap == 0) {
        *n_out = size;
        return MOP_OK;
    }
    MOP_CHECK_ARG(buf != NULL);
    if (!c->masked)
        return mop_fail(MOP_E_STATE, "%s: client %d has not masked its input yet", fn, (int)c->index);
    /* Validate the list, and that the union with earlier reveals leaves >= t survivors. */
    int32_t already = 0;
    for (int32_t j = 0; j < n; j++)
        already += c->revealed[j];
    int32_t fresh = 0;
    for (int32_t k = 0; k < n_dropped; k++) {
        int32_t j = dropped[k];
        if (j < 0 || j >= n)
            return mop_fail(MOP_E_INVALID_ARG, "%s: dropped[%d] = %d not in 0..%d", fn, (int)k,
                            (int)j, (int)n - 1);
        if (j == c->index)
            return mop_fail(MOP_E_INVALID_ARG, "%s: client %d cannot be dropped from its own view",
                            fn, (int)j);
        for (int32_t k2 = 0; k2 < k; k2++)
            if (dropped[k2] == j)
                return mop_fail(MOP_E_INVALID_ARG, "%s: client %d listed twice", fn, (int)j);
        fresh += !c->revealed[j];
    }
    if (n - (already + fresh) < c->cfg.min_surv)
        return mop_fail(MOP_E_STATE,
                        "%s: revealing keys for %d dropped clients would leave %d survivors, "
                        "fewer than min_survivors %d (their sum would expose too few inputs)",
                        fn, (int)(already + fresh), (int)(n - already - fresh), (int)c->cfg.min_surv);
    if (cap < size)
        return mop_fail(MOP_E_RANGE, "%s: buffer of %zu bytes, the blob needs %zu", fn, cap, size);
    uint8_t *p = buf;
    memcpy(p, "MSAR", 4);
    mop_put_le32(p + 4, SA_VERSION);
    mop_put_le32(p + 8, (uint32_t)c->index);
    mop_put_le32(p + 12, (uint32_t)n);
    mop_put_le64(p + 16, (uint64_t)c->cfg.round);
    mop_put_le32(p + 24, (uint32_t)n_dropped);
    mop_put_le32(p + 28, 0);
    p += SA_RHEADER;
    for (int32_t k = 0; k < n_dropped; k++) {
        mop_put_le32(p, (uint32_t)dropped[k]);
        memcpy(p + 4, c->keys + (size_t)dropped[k] * 32, 32);
        c->revealed[dropped[k]] = 1;
        p += SA_RENTRY;
    }
    secagg_checksum(p, buf, (size_t)(p - buf));
    *n_out = size;
    return MOP_OK;
}

/* ---- server ---- */

mop_status mop_secagg_server_create(const mop_secagg_params *params, mop_secagg_server **out)
{
    MOP_CHECK_ARG(out != NULL);
    *out = NULL;
    secagg_cfg cfg;
    MOP_TRY(secagg_cfg_from(&cfg, params, "mop_secagg_server_create"));
    if (sodium_init() < 0)
        return mop_fail(MOP_E_INTERNAL, "mop_secagg_server_create: sodium_init() failed");
    mop_secagg_server *s = mop_calloc(1, sizeof *s);
    uint64_t *acc = mop_calloc((size_t)cfg.length + 1, sizeof(uint64_t));
    uint8_t *have = mop_calloc((size_t)cfg.n, 1);
    uint8_t *dropped = mop_calloc((size_t)cfg.n, 1);
    uint8_t **rev = mop_calloc((size_t)cfg.n, sizeof(uint8_t *));
    if (!s || !acc || !have || !dropped || !rev) {
        mop_free(s);
        mop_free(acc);
        mop_free(have);
        mop_free(dropped);
        mop_free(rev);
        return mop_fail(MOP_E_NOMEM, "mop_secagg_server_create: out of memory");
    }
    s->cfg = cfg;
    s->acc = acc;
    s->have = have;
    s->dropped = dropped;
    s->rev = rev;
    *out = s;
    return MOP_OK;
}

void mop_secagg_server_free(mop_secagg_server *s)
{
    if (!s)
        return;
    for (int32_t i = 0; i < s->cfg.n; i++)
        mop_free(s->rev[i]);
    mop_free(s->rev);
    mop_free(s->acc);
    mop_free(s->have);
    mop_free(s->dropped);
    mop_free(s);
}

/* Checks shared by both blob kinds: magic, version, size, checksum, n, round. */
static mop_status secagg_check_blob(const mop_secagg_server *s, const uint8_t *b, size_t n,
                                    const char *magic, size_t expected, const char *fn)
{
    if (n != expected)
        return mop_fail(MOP_E_FORMAT, "%s: blob of %zu bytes, its header implies %zu (%s)", fn, n,
                        expected, n < expected ? "truncated" : "trailing bytes");
    uint8_t h[SA_HASH];
    secagg_checksum(h, b, n - SA_HASH);
    if (sodium_memcmp(h, b + n - SA_HASH, SA_HASH) != 0)
        return mop_fail(MOP_E_CHECKSUM, "%s: %s blob checksum mismatch", fn, magic);
    uint32_t nc = mop_get_le32(b + 12);
    uint64_t round = mop_get_le64(b + 16);
    if (nc != (uint32_t)s->cfg.n || round != (uint64_t)s->cfg.round)
        return mop_fail(MOP_E_STATE, "%s: blob from a round with n_clients %u, round %llu; the "
                        "server has n_clients %d, round %lld", fn, (unsigned)nc,
                        (unsigned long long)round, (int)s->cfg.n, (long long)s->cfg.round);
    uint32_t idx = mop_get_le32(b + 8);
    if (idx >= (uint32_t)s->cfg.n)
        return mop_fail(MOP_E_FORMAT, "%s: client index %u not in 0..%d", fn, (unsigned)idx,
                        (int)s->cfg.n - 1);
    return MOP_OK;
}

static mop_status secagg_check_head(const uint8_t *b, size_t n, const char *magic, size_t head,
                                    const char *fn)
{
    if (n < head + SA_HASH)
        return mop_fail(MOP_E_FORMAT, "%s: blob of %zu bytes is shorter than its header", fn, n);
    if (memcmp(b, magic, 4) != 0)
        return mop_fail(MOP_E_FORMAT, "%s: bad magic (expected \"%s\")", fn, magic);
    uint32_t v = mop_get_le32(b + 4);
    if (v != SA_VERSION)
        return mop_fail(MOP_E_UNSUPPORTED, "%s: blob version %u, this library reads %u", fn,
                        (unsigned)v, SA_VERSION);
    return MOP_OK;
}

mop_status mop_secagg_server_add_masked(mop_secagg_server *s, const uint8_t *blob, size_t n)
{
    static const char *fn = "mop_secagg_server_add_masked";
    MOP_CHECK_ARG(s != NULL);
    MOP_CHECK_ARG(blob != NULL);
    const secagg_cfg *cfg = &s->cfg;
    MOP_TRY(secagg_check_head(blob, n, "MSAM", SA_HEADER, fn));
    uint32_t bits = mop_get_le32(blob + 24);
    uint64_t length = mop_get_le64(blob + 40);
    if (bits != 32 && bits != 64)
        return mop_fail(MOP_E_FORMAT, "%s: ring_bits %u in blob", fn, (unsigned)bits);
    if (length < 1 || length > (uint64_t)SA_MAX_LENGTH)
        return mop_fail(MOP_E_FORMAT, "%s: length %llu in blob", fn, (unsigned long long)length);
    size_t expected = SA_HEADER + (size_t)(length + 1) * (bits / 8) + SA_HASH;
    MOP_TRY(secagg_check_blob(s, blob, n, "masked", expected, fn));
    if (mop_get_le32(blob + 36) != 0)
        return mop_fail(MOP_E_FORMAT, "%s: reserved header word at byte 36 is 0x%08x, must be 0",
                        fn, (unsigned)mop_get_le32(blob + 36));
    if (bits != (uint32_t)cfg->bits || mop_get_le32(blob + 28) != f32_bits(cfg->scale) ||
        mop_get_le32(blob + 32) != f32_bits(cfg->range))
        return mop_fail(MOP_E_STATE, "%s: blob uses other ring or fixed-point parameters "
                        "(ring_bits %u) than the server (ring_bits %d, scale %g, clip_range %g)",
                        fn, (unsigned)bits, (int)cfg->bits, (double)cfg->scale, (double)cfg->range);
    if (length != (uint64_t)cfg->length)
        return mop_fail(MOP_E_SHAPE, "%s: blob holds %llu values, the round expects %lld", fn,
                        (unsigned long long)length, (long long)cfg->length);
    uint32_t idx = mop_get_le32(blob + 8);
    if (s->have[idx])
        return mop_fail(MOP_E_STATE, "%s: client %u already sent its masked input", fn, (unsigned)idx);
    if (s->dropped[idx])
        return mop_fail(MOP_E_STATE, "%s: client %u was declared dropped (its keys were revealed); "
                        "accepting its input now would expose it", fn, (unsigned)idx);
    uint64_t mask = secagg_ring_mask(cfg->bits);
    const uint8_t *p = blob + SA_HEADER;
    for (size_t i = 0; i <= (size_t)length; i++) {
        uint64_t v = bits == 32 ? mop_get_le32(p + 4 * i) : mop_get_le64(p + 8 * i);
        s->acc[i] = (s->acc[i] + v) & mask;
    }
    s->have[idx] = 1;
    return MOP_OK;
}

mop_status mop_secagg_server_add_recovery(mop_secagg_server *s, const uint8_t *blob, size_t n)
{
    static const char *fn = "mop_secagg_server_add_recovery";
    MOP_CHECK_ARG(s != NULL);
    MOP_CHECK_ARG(blob != NULL);
    int32_t nc = s->cfg.n;
    MOP_TRY(secagg_check_head(blob, n, "MSAR", SA_RHEADER, fn));
    uint32_t m = mop_get_le32(blob + 24);
    if (m >= (uint32_t)nc)
        return mop_fail(MOP_E_FORMAT, "%s: %u keys for %d clients", fn, (unsigned)m, (int)nc);
    MOP_TRY(secagg_check_blob(s, blob, n, "recovery", SA_RHEADER + (size_t)m * SA_RENTRY + SA_HASH, fn));
    if (mop_get_le32(blob + 28) != 0)
        return mop_fail(MOP_E_FORMAT, "%s: reserved header word at byte 28 is 0x%08x, must be 0",
                        fn, (unsigned)mop_get_le32(blob + 28));
    uint32_t i = mop_get_le32(blob + 8);
    if (!s->have[i])
        return mop_fail(MOP_E_STATE, "%s: survivor %u's masked input is not in the sum", fn,
                        (unsigned)i);
    const uint8_t *e = blob + SA_RHEADER;
    for (uint32_t k = 0; k < m; k++) {
        uint32_t j = mop_get_le32(e + (size_t)k * SA_RENTRY);
        if (j >= (uint32_t)nc || j == i)
            return mop_fail(MOP_E_FORMAT, "%s: entry %u names client %u (survivor %u, n_clients %d)",
                            fn, (unsigned)k, (unsigned)j, (unsigned)i, (int)nc);
        if (s->have[j])
            return mop_fail(MOP_E_STATE, "%s: client %u is not dropped: its input is in the sum",
                            fn, (unsigned)j);
        if (s->rev[i] && (s->rev[i][j / 8] >> (j % 8) & 1))
            return mop_fail(MOP_E_STATE, "%s: key of pair (%u, %u) already applied", fn,
                            (unsigned)i, (unsigned)j);
        for (uint32_t k2 = 0; k2 < k; k2++)
            if (mop_get_le32(e + (size_t)k2 * SA_RENTRY) == j)
                return mop_fail(MOP_E_FORMAT, "%s: client %u listed twice", fn, (unsigned)j);
    }
    if (!s->rev[i]) {
        s->rev[i] = mop_calloc(((size_t)nc + 7) / 8, 1);
        if (!s->rev[i])
            return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    }
    size_t len = (size_t)s->cfg.length + 1;
    for (uint32_t k = 0; k < m; k++) {
        uint32_t j = mop_get_le32(e + (size_t)k * SA_RENTRY);
        /* Survivor i added +m_ij if j > i, −m_ij if j < i: take it back. */
        secagg_add_mask(s->acc, len, e + (size_t)k * SA_RENTRY + 4, j > i ? -1 : +1, s->cfg.bits);
        s->rev[i][j / 8] |= (uint8_t)(1u << (j % 8));
        s->dropped[j] = 1;
    }
    return MOP_OK;
}

mop_status mop_secagg_server_finish(mop_secagg_server *s, float *sum, int64_t n, int32_t *included,
                                    int32_t *n_included)
{
    static const char *fn = "mop_secagg_server_finish";
    MOP_CHECK_ARG(s != NULL);
    MOP_CHECK_ARG(sum != NULL);
    const secagg_cfg *cfg = &s->cfg;
    if (n != cfg->length)
        return mop_fail(MOP_E_SHAPE, "%s: output of %lld floats, the round has length %lld", fn,
                        (long long)n, (long long)cfg->length);
    int32_t count = 0;
    for (int32_t i = 0; i < cfg->n; i++)
        count += s->have[i];
    if (count < cfg->min_surv)
        return mop_fail(MOP_E_STATE, "%s: %d masked inputs, fewer than min_survivors %d", fn,
                        (int)count, (int)cfg->min_surv);
    for (int32_t i = 0; i < cfg->n; i++) {
        if (!s->have[i])
            continue;
        for (int32_t j = 0; j < cfg->n; j++)
            if (!s->have[j] && !(s->rev[i] && (s->rev[i][j / 8] >> (j % 8) & 1)))
                return mop_fail(MOP_E_STATE, "%s: client %d's input is missing and survivor %d "
                                "has not revealed the key it shares with it", fn, (int)j, (int)i);
    }
    if ((s->acc[cfg->length] & secagg_ring_mask(cfg->bits)) != 0)
        return mop_fail(MOP_E_CHECKSUM, "%s: the masks did not cancel (check slot is nonzero): a "
                        "client used wrong peer keys or a revealed key is wrong", fn);
    secagg_decode(sum, s->acc, (size_t)cfg->length, cfg->scale, cfg->bits);
    if (included) {
        int32_t k = 0;
        for (int32_t i = 0; i < cfg->n; i++)
            if (s->have[i])
                included[k++] = i;
    }
    if (n_included)
        *n_included = count;
    return MOP_OK;
}
