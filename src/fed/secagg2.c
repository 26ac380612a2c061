/* Secure aggregation with dropout recovery (Bonawitz et al. 2017, the
 * semi-honest protocol: self-masks, pairwise masks, t-of-n Shamir shares of
 * the self-mask seed and of the pairwise-mask secret key). See mop_fed.h
 * ("Secure aggregation with dropout recovery") and docs/PRIVACY.md.
 *
 *   y_u = enc(x_u) + PRG(b_u) + Σ_{v∈U2, v>u} PRG(s_uv) − Σ_{v∈U2, v<u} PRG(s_uv)
 *   Σ_{u∈U3} y_u − Σ_{u∈U3} PRG(b_u) − (masks of U3 with U2 \ U3) = Σ_{u∈U3} enc(x_u)
 *
 * libsodium: X25519 (crypto_box_keypair, crypto_scalarmult), BLAKE2b
 * (crypto_generichash), XChaCha20-Poly1305 (crypto_aead_xchacha20poly1305_ietf),
 * ChaCha20 as the PRG (secagg_add_mask). Shamir sharing: shamir.c.
 *
 * Every message: 48-byte header, body, 16-byte BLAKE2b checksum of all
 * preceding bytes. Header: "MSA2", version, type, index (sender, or the
 * recipient for the server's per-client messages, 0xffffffff for a
 * broadcast), n_clients, reserved 0, round (u64), digest of the settings
 * (16 bytes). All integers little-endian. Bodies: docs/PRIVACY.md. */
#include <math.h>
#include <string.h>

#include <sodium.h>

#include "fed.h"
#include "internal.h"
#include "privacy.h"
#include "shamir.h"

#define S2_VERSION 1u
#define S2_HDR 48u
#define S2_HASH 16u
#define S2_BROADCAST 0xffffffffu
enum { T_ADV = 1, T_KEYS, T_SHARES, T_FWD, T_MASKED, T_SURV, T_UNMASK };
#define S2_PT (8u + 2u * SHAMIR_SHARE_BYTES)                                       /* u, v, share_s, share_b */
#define S2_CT (crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + S2_PT + crypto_aead_xchacha20poly1305_ietf_ABYTES)
#define S2_SENTRY (4u + S2_CT)                                                      /* peer index + ciphertext */
#define S2_KENTRY 68u                                                               /* index + c_pk + s_pk */
#define S2_UENTRY (8u + SHAMIR_SHARE_BYTES)                                         /* about, kind, share */
#define KIND_B 1u
#define KIND_S 2u

static const char *const stage_name[] = {"advertise keys", "share keys", "masked input",
                                         "unmasking", "done"};

/* ---- little-endian helpers ---- */
static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}
static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ---- settings digest, keys, PRG seeds ---- */

static void cfg_digest(uint8_t d[16], const secagg_cfg *c)
{
    static const char dom[] = "libmop-secagg2-cfg";
    uint8_t b[40];
    put32(b, (uint32_t)c->n);
    put32(b + 4, (uint32_t)c->min_surv);
    put64(b + 8, (uint64_t)c->round);
    put64(b + 16, (uint64_t)c->length);
    put32(b + 24, (uint32_t)c->bits);
    put32(b + 28, fbits(c->scale));
    put32(b + 32, fbits(c->range));
    put32(b + 36, S2_VERSION);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 16);
    crypto_generichash_update(&st, (const uint8_t *)dom, sizeof dom - 1);
    crypto_generichash_update(&st, b, sizeof b);
    crypto_generichash_final(&st, d, 16);
}

/* key = BLAKE2b-256(domain ‖ X25519(sk_a, pk_b) ‖ digest ‖ lo ‖ hi ‖ pk_lo ‖ pk_hi):
 * the same for (a, b) and (b, a). −1 for a low-order point. */
static int pair_key(uint8_t key[32], const char *dom, const uint8_t digest[16],
                    const uint8_t sk_a[32], int32_t a, const uint8_t pk_a[32], int32_t b,
                    const uint8_t pk_b[32])
{
    uint8_t sh[crypto_scalarmult_BYTES], num[8];
    if (crypto_scalarmult(sh, sk_a, pk_b) != 0)
        return -1;
    int32_t lo = a < b ? a : b, hi = a < b ? b : a;
    put32(num, (uint32_t)lo);
    put32(num + 4, (uint32_t)hi);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)dom, strlen(dom));
    crypto_generichash_update(&st, sh, sizeof sh);
    crypto_generichash_update(&st, digest, 16);
    crypto_generichash_update(&st, num, sizeof num);
    crypto_generichash_update(&st, a < b ? pk_a : pk_b, 32);
    crypto_generichash_update(&st, a < b ? pk_b : pk_a, 32);
    crypto_generichash_final(&st, key, 32);
    sodium_memzero(sh, sizeof sh);
    sodium_memzero(&st, sizeof st);
    return 0;
}

/* PRG key of the self-mask, or the commitment to b (dom differs), bound to the round. */
static void seed_hash(uint8_t out[32], const char *dom, const uint8_t b[32],
                      const uint8_t digest[16], int32_t index)
{
    uint8_t num[4];
    put32(num, (uint32_t)index);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)dom, strlen(dom));
    crypto_generichash_update(&st, b, 32);
    crypto_generichash_update(&st, digest, 16);
    crypto_generichash_update(&st, num, 4);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
}

#define DOM_MASK "libmop-secagg2-mask"
#define DOM_ENC "libmop-secagg2-enc"
#define DOM_SELF "libmop-secagg2-self"
#define DOM_COMMIT "libmop-secagg2-commit"

/* Additional data of the ciphertext of shares from u to v. */
static void share_ad(uint8_t ad[24], const uint8_t digest[16], int32_t u, int32_t v)
{
    memcpy(ad, digest, 16);
    put32(ad + 16, (uint32_t)u);
    put32(ad + 20, (uint32_t)v);
}

/* ---- messages ---- */

typedef struct s2_buf {
    uint8_t *p;
    size_t n, cap;
} s2_buf;

static uint8_t *buf_reserve(s2_buf *b, size_t n)
{
    if (n > b->cap) {
        uint8_t *q = mop_alloc(n);
        if (!q)
            return NULL;
        if (b->p) {
            sodium_memzero(b->p, b->cap);
            mop_free(b->p);
        }
        b->p = q;
        b->cap = n;
    }
    b->n = n;
    return b->p;
}

static void buf_free(s2_buf *b)
{
    if (b->p) {
        sodium_memzero(b->p, b->cap);
        mop_free(b->p);
    }
    memset(b, 0, sizeof *b);
}

static void msg_head(uint8_t *m, uint32_t type, uint32_t index, const secagg_cfg *c,
                     const uint8_t digest[16])
{
    memcpy(m, "MSA2", 4);
    put32(m + 4, S2_VERSION);
    put32(m + 8, type);
    put32(m + 12, index);
    put32(m + 16, (uint32_t)c->n);
    put32(m + 20, 0);
    put64(m + 24, (uint64_t)c->round);
    memcpy(m + 32, digest, 16);
}

static void msg_seal(uint8_t *m, size_t n)
{
    crypto_generichash(m + n - S2_HASH, S2_HASH, m, n - S2_HASH, NULL, 0);
}

static const char *type_name(uint32_t t)
{
    static const char *const names[] = {"?", "key advertisement", "key list", "shares",
                                        "forwarded shares", "masked input", "survivor list",
                                        "unmasking shares"};
    return t >= 1 && t <= 7 ? names[t] : "unknown";
}

/* Check a message's frame and header; *body / *nb: the body. */
static mop_status msg_open(const uint8_t *m, size_t n, uint32_t type, const secagg_cfg *c,
                           const uint8_t digest[16], const char *fn, uint32_t *index,
                           const uint8_t **body, size_t *nb)
{
    if (n < S2_HDR + S2_HASH)
        return mop_fail(MOP_E_FORMAT, "%s: message of %zu bytes is shorter than header + checksum "
                        "(%u)", fn, n, S2_HDR + S2_HASH);
    if (memcmp(m, "MSA2", 4) != 0)
        return mop_fail(MOP_E_FORMAT, "%s: bad magic (expected \"MSA2\")", fn);
    if (get32(m + 4) != S2_VERSION)
        return mop_fail(MOP_E_UNSUPPORTED, "%s: message version %u, this library reads %u", fn,
                        (unsigned)get32(m + 4), S2_VERSION);
    uint8_t h[S2_HASH];
    crypto_generichash(h, S2_HASH, m, n - S2_HASH, NULL, 0);
    if (sodium_memcmp(h, m + n - S2_HASH, S2_HASH) != 0)
        return mop_fail(MOP_E_CHECKSUM, "%s: message checksum mismatch (corrupted in transit)", fn);
    if (get32(m + 20) != 0)
        return mop_fail(MOP_E_FORMAT, "%s: reserved header word is 0x%08x, must be 0", fn,
                        (unsigned)get32(m + 20));
    uint32_t t = get32(m + 8);
    if (t != type)
        return mop_fail(MOP_E_STATE, "%s: got a %s message, this stage expects a %s", fn,
                        type_name(t), type_name(type));
    if (get32(m + 16) != (uint32_t)c->n || get64(m + 24) != (uint64_t)c->round ||
        sodium_memcmp(m + 32, digest, 16) != 0)
        return mop_fail(MOP_E_STATE, "%s: message from a round with other settings (n_clients "
                        "%u, round %llu; here n_clients %d, round %lld, or other length, "
                        "threshold, ring or fixed-point parameters)", fn, (unsigned)get32(m + 16),
                        (unsigned long long)get64(m + 24), (int)c->n, (long long)c->round);
    *index = get32(m + 12);
    *body = m + S2_HDR;
    *nb = n - S2_HDR - S2_HASH;
    return MOP_OK;
}

/* Read a count-prefixed list (u32 count, u32 reserved, count entries of @p esize). */
static mop_status list_open(const uint8_t *body, size_t nb, size_t skip, size_t esize,
                            int32_t n_clients, const char *fn, uint32_t *count,
                            const uint8_t **entries)
{
    if (nb < skip + 8)
        return mop_fail(MOP_E_FORMAT, "%s: body of %zu bytes is truncated", fn, nb);
    uint32_t m = get32(body + skip);
    if (get32(body + skip + 4) != 0)
        return mop_fail(MOP_E_FORMAT, "%s: reserved body word is 0x%08x, must be 0", fn,
                        (unsigned)get32(body + skip + 4));
    if (m > (uint32_t)n_clients)
        return mop_fail(MOP_E_FORMAT, "%s: %u entries for %d clients", fn, (unsigned)m,
                        (int)n_clients);
    size_t want = skip + 8 + (size_t)m * esize;
    if (nb != want)
        return mop_fail(MOP_E_FORMAT, "%s: body of %zu bytes, %u entries imply %zu (%s)", fn, nb,
                        (unsigned)m, want, nb < want ? "truncated" : "trailing bytes");
    *count = m;
    *entries = body + skip + 8;
    return MOP_OK;
}

/* Entry indices (first u32 of each entry) strictly ascending, < n. */
static mop_status ascending(const uint8_t *e, uint32_t m, size_t esize, int32_t n,
                            const char *fn)
{
    for (uint32_t k = 0; k < m; k++) {
        uint32_t j = get32(e + (size_t)k * esize);
        if (j >= (uint32_t)n)
            return mop_fail(MOP_E_FORMAT, "%s: entry %u names client %u, not in 0..%d", fn,
                            (unsigned)k, (unsigned)j, (int)n - 1);
        if (k > 0 && j <= get32(e + (size_t)(k - 1) * esize))
            return mop_fail(MOP_E_FORMAT, "%s: entries not in ascending client order (entry %u)",
                            fn, (unsigned)k);
    }
    return MOP_OK;
}

static int32_t count_set(const uint8_t *f, int32_t n)
{
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++)
        k += f[i] != 0;
    return k;
}

/* ---- client ---- */

struct mop_secagg2_client {
    secagg_cfg cfg;
    uint8_t digest[16];
    int32_t index, stage;
    uint8_t c_pk[32], c_sk[32], s_pk[32], s_sk[32], b[32];
    uint8_t *pks;   /* (n, 64) c_pk ‖ s_pk of the U1 members */
    uint8_t *mkey;  /* (n, 32) pairwise mask keys s_uv with the U1 members */
    uint8_t *u1, *u2;
    uint8_t *sh;    /* (n, 2·SHARE) share of s_v ‖ share of b_v held for v */
    s2_buf out;
};

mop_status mop_secagg2_client_create(const mop_secagg_params *params, int32_t index,
                                     mop_secagg2_client **out)
{
    static const char *fn = "mop_secagg2_client_create";
    MOP_CHECK_ARG(out != NULL);
    *out = NULL;
    secagg_cfg cfg;
    MOP_TRY(secagg_cfg_from(&cfg, params, fn));
    if (index < 0 || index >= cfg.n)
        return mop_fail(MOP_E_INVALID_ARG, "%s: index %d not in 0..%d", fn, (int)index,
                        (int)cfg.n - 1);
    if (sodium_init() < 0)
        return mop_fail(MOP_E_INTERNAL, "%s: sodium_init() failed", fn);
    size_t n = (size_t)cfg.n;
    mop_secagg2_client *c = mop_calloc(1, sizeof *c);
    if (c) {
        c->pks = mop_calloc(n, 64);
        c->mkey = mop_calloc(n, 32);
        c->u1 = mop_calloc(n, 1);
        c->u2 = mop_calloc(n, 1);
        c->sh = mop_calloc(n, 2 * SHAMIR_SHARE_BYTES);
    }
    if (!c || !c->pks || !c->mkey || !c->u1 || !c->u2 || !c->sh) {
        mop_secagg2_client_free(c);
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    }
    c->cfg = cfg;
    c->index = index;
    cfg_digest(c->digest, &cfg);
    crypto_box_keypair(c->c_pk, c->c_sk);
    crypto_box_keypair(c->s_pk, c->s_sk);
    *out = c;
    return MOP_OK;
}

void mop_secagg2_client_free(mop_secagg2_client *c)
{
    if (!c)
        return;
    size_t n = (size_t)c->cfg.n;
    if (c->mkey)
        sodium_memzero(c->mkey, n * 32);
    if (c->sh)
        sodium_memzero(c->sh, n * 2 * SHAMIR_SHARE_BYTES);
    mop_free(c->pks);
    mop_free(c->mkey);
    mop_free(c->u1);
    mop_free(c->u2);
    mop_free(c->sh);
    buf_free(&c->out);
    sodium_memzero(c, sizeof *c);
    mop_free(c);
}

static mop_status client_advertise(mop_secagg2_client *c)
{
    size_t n = S2_HDR + 64 + S2_HASH;
    uint8_t *m = buf_reserve(&c->out, n);
    if (!m)
        return mop_fail(MOP_E_NOMEM, "mop_secagg2_client_step: out of memory");
    msg_head(m, T_ADV, (uint32_t)c->index, &c->cfg, c->digest);
    memcpy(m + S2_HDR, c->c_pk, 32);
    memcpy(m + S2_HDR + 32, c->s_pk, 32);
    msg_seal(m, n);
    return MOP_OK;
}

/* Stage share: key list in, encrypted shares out. */
static mop_status client_share(mop_secagg2_client *c, const uint8_t *msg, size_t len)
{
    static const char *fn = "mop_secagg2_client_step (share keys)";
    const secagg_cfg *cfg = &c->cfg;
    int32_t n = cfg->n;
    uint32_t idx = 0, m = 0;
    const uint8_t *body = NULL, *e = NULL;
    size_t nb = 0;
    MOP_TRY(msg_open(msg, len, T_KEYS, cfg, c->digest, fn, &idx, &body, &nb));
    if (idx != S2_BROADCAST)
        return mop_fail(MOP_E_FORMAT, "%s: key list addressed to %u, expected a broadcast", fn,
                        (unsigned)idx);
    MOP_TRY(list_open(body, nb, 0, S2_KENTRY, n, fn, &m, &e));
    MOP_TRY(ascending(e, m, S2_KENTRY, n, fn));
    if ((int32_t)m < cfg->min_surv)
        return mop_fail(MOP_E_STATE, "%s: %u clients advertised keys, fewer than the threshold "
                        "t = %d", fn, (unsigned)m, (int)cfg->min_surv);
    int self = -1;
    for (uint32_t k = 0; k < m; k++) {
        const uint8_t *ek = e + (size_t)k * S2_KENTRY;
        if (get32(ek) == (uint32_t)c->index) {
            self = (int)k;
            if (sodium_memcmp(ek + 4, c->c_pk, 32) != 0 || sodium_memcmp(ek + 36, c->s_pk, 32) != 0)
                return mop_fail(MOP_E_STATE, "%s: the list holds other public keys for this "
                                "client (%d) than it advertised", fn, (int)c->index);
        }
        for (uint32_t k2 = 0; k2 < k; k2++)
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 2; b++)
                    if (memcmp(ek + 4 + 32 * a, e + (size_t)k2 * S2_KENTRY + 4 + 32 * b, 32) == 0)
                        return mop_fail(MOP_E_STATE, "%s: clients %u and %u list the same "
                                        "public key", fn, (unsigned)get32(e + (size_t)k2 * S2_KENTRY),
                                        (unsigned)get32(ek));
        if (memcmp(ek + 4, ek + 36, 32) == 0)
            return mop_fail(MOP_E_STATE, "%s: client %u lists the same key twice", fn,
                            (unsigned)get32(ek));
    }
    if (self < 0)
        return mop_fail(MOP_E_STATE, "%s: the key list does not hold this client (%d)", fn,
                        (int)c->index);

    /* Everything below writes only into temporaries until the commit. */
    mop_status st = MOP_OK;
    size_t size = S2_HDR + 32 + 8 + (size_t)(m - 1) * S2_SENTRY + S2_HASH;
    uint32_t *xs = mop_alloc((size_t)m * sizeof *xs);
    uint8_t *shs = mop_alloc((size_t)m * SHAMIR_SHARE_BYTES);
    uint8_t *shb = mop_alloc((size_t)m * SHAMIR_SHARE_BYTES);
    uint8_t *mkey = mop_calloc((size_t)n, 32);
    uint8_t b[32], pt[S2_PT];
    if (!xs || !shs || !shb || !mkey) {
        st = mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
        goto out;
    }
    for (uint32_t k = 0; k < m; k++)
        xs[k] = get32(e + (size_t)k * S2_KENTRY) + 1;
    for (uint32_t k = 0; k < m; k++) {
        const uint8_t *ek = e + (size_t)k * S2_KENTRY;
        int32_t v = (int32_t)get32(ek);
        if (v == c->index)
            continue;
        if (pair_key(mkey + (size_t)v * 32, DOM_MASK, c->digest, c->s_sk, c->index, c->s_pk, v,
                     ek + 36) != 0) {
            st = mop_fail(MOP_E_STATE, "%s: client %d's mask key is a low-order point", fn, (int)v);
            goto out;
        }
    }
    randombytes_buf(b, sizeof b);
    if (shamir_split(shs, c->s_sk, cfg->min_surv, xs, (int32_t)m) != 0 ||
        shamir_split(shb, b, cfg->min_surv, xs, (int32_t)m) != 0) {
        st = mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
        goto out;
    }
    uint8_t *o = buf_reserve(&c->out, size);
    if (!o) {
        st = mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
        goto out;
    }
    msg_head(o, T_SHARES, (uint32_t)c->index, cfg, c->digest);
    seed_hash(o + S2_HDR, DOM_COMMIT, b, c->digest, c->index);
    put32(o + S2_HDR + 32, m - 1);
    put32(o + S2_HDR + 36, 0);
    uint8_t *w = o + S2_HDR + 40;
    for (uint32_t k = 0; k < m; k++) {
        const uint8_t *ek = e + (size_t)k * S2_KENTRY;
        int32_t v = (int32_t)get32(ek);
        if (v == c->index)
            continue;
        uint8_t key[32], ad[24];
        if (pair_key(key, DOM_ENC, c->digest, c->c_sk, c->index, c->c_pk, v, ek + 4) != 0) {
            st = mop_fail(MOP_E_STATE, "%s: client %d's encryption key is a low-order point", fn,
                          (int)v);
            goto out;
        }
        put32(pt, (uint32_t)c->index);
        put32(pt + 4, (uint32_t)v);
        memcpy(pt + 8, shs + (size_t)k * SHAMIR_SHARE_BYTES, SHAMIR_SHARE_BYTES);
        memcpy(pt + 8 + SHAMIR_SHARE_BYTES, shb + (size_t)k * SHAMIR_SHARE_BYTES, SHAMIR_SHARE_BYTES);
        share_ad(ad, c->digest, c->index, v);
        put32(w, (uint32_t)v);
        uint8_t *nonce = w + 4;
        randombytes_buf(nonce, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
        crypto_aead_xchacha20poly1305_ietf_encrypt(nonce + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
                                                   NULL, pt, sizeof pt, ad, sizeof ad, NULL, nonce,
                                                   key);
        sodium_memzero(key, sizeof key);
        w += S2_SENTRY;
    }
    msg_seal(o, size);
    /* commit */
    for (uint32_t k = 0; k < m; k++) {
        const uint8_t *ek = e + (size_t)k * S2_KENTRY;
        uint32_t v = get32(ek);
        c->u1[v] = 1;
        memcpy(c->pks + (size_t)v * 64, ek + 4, 64);
        if ((int32_t)v == c->index) {
            memcpy(c->sh + (size_t)v * 2 * SHAMIR_SHARE_BYTES, shs + (size_t)k * SHAMIR_SHARE_BYTES,
                   SHAMIR_SHARE_BYTES);
            memcpy(c->sh + (size_t)v * 2 * SHAMIR_SHARE_BYTES + SHAMIR_SHARE_BYTES,
                   shb + (size_t)k * SHAMIR_SHARE_BYTES, SHAMIR_SHARE_BYTES);
        }
    }
    memcpy(c->mkey, mkey, (size_t)n * 32);
    memcpy(c->b, b, 32);
out:
    sodium_memzero(b, sizeof b);
    sodium_memzero(pt, sizeof pt);
    if (shs)
        sodium_memzero(shs, (size_t)m * SHAMIR_SHARE_BYTES);
    if (shb)
        sodium_memzero(shb, (size_t)m * SHAMIR_SHARE_BYTES);
    if (mkey)
        sodium_memzero(mkey, (size_t)n * 32);
    mop_free(xs);
    mop_free(shs);
    mop_free(shb);
    mop_free(mkey);
    return st;
}

/* Stage masked input: forwarded shares and x in, masked vector out. */
static mop_status client_mask(mop_secagg2_client *c, const uint8_t *msg, size_t len,
                              const float *x, int64_t n_x)
{
    static const char *fn = "mop_secagg2_client_step (masked input)";
    const secagg_cfg *cfg = &c->cfg;
    int32_t n = cfg->n;
    if (!x)
        return mop_fail(MOP_E_INVALID_ARG, "%s: the masked-input stage needs x", fn);
    if (n_x != cfg->length)
        return mop_fail(MOP_E_SHAPE, "%s: x has %lld floats, the round expects length %lld", fn,
                        (long long)n_x, (long long)cfg->length);
    for (int64_t i = 0; i < n_x; i++)
        if (!isfinite(x[i]))
            return mop_fail(MOP_E_INVALID_ARG, "%s: x[%lld] = %g is not finite", fn,
                            (long long)i, (double)x[i]);
    uint32_t idx = 0, m = 0;
    const uint8_t *body = NULL, *e = NULL;
    size_t nb = 0;
    MOP_TRY(msg_open(msg, len, T_FWD, cfg, c->digest, fn, &idx, &body, &nb));
    if (idx != (uint32_t)c->index)
        return mop_fail(MOP_E_STATE, "%s: forwarded shares addressed to client %u, this is "
                        "client %d", fn, (unsigned)idx, (int)c->index);
    MOP_TRY(list_open(body, nb, 0, S2_SENTRY, n, fn, &m, &e));
    MOP_TRY(ascending(e, m, S2_SENTRY, n, fn));
    if ((int32_t)m + 1 < cfg->min_surv)
        return mop_fail(MOP_E_STATE, "%s: shares from %u other clients: with this one fewer "
                        "than the threshold t = %d", fn, (unsigned)m, (int)cfg->min_surv);
    mop_status st = MOP_OK;
    uint8_t *got = mop_alloc((size_t)m * 2 * SHAMIR_SHARE_BYTES);
    size_t L = (size_t)cfg->length + 1;
    uint64_t *acc = mop_alloc(L * sizeof *acc);
    uint8_t pt[S2_PT], key[32];
    if (!got || !acc) {
        st = mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
        goto out;
    }
    for (uint32_t k = 0; k < m; k++) {
        const uint8_t *ek = e + (size_t)k * S2_SENTRY;
        int32_t u = (int32_t)get32(ek);
        if (u == c->index || !c->u1[u]) {
            st = mop_fail(MOP_E_STATE, "%s: shares from client %d, which is %s", fn, (int)u,
                          u == c->index ? "this client" : "not in the key list");
            goto out;
        }
        uint8_t ad[24];
        share_ad(ad, c->digest, u, c->index);
        if (pair_key(key, DOM_ENC, c->digest, c->c_sk, c->index, c->c_pk, u,
                     c->pks + (size_t)u * 64) != 0 ||
            crypto_aead_xchacha20poly1305_ietf_decrypt(
                pt, NULL, NULL, ek + 4 + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
                S2_CT - crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, ad, sizeof ad, ek + 4,
                key) != 0) {
            st = mop_fail(MOP_E_CHECKSUM, "%s: the shares from client %d do not decrypt "
                          "(tampered, or encrypted for another client or round)", fn, (int)u);
            goto out;
        }
        if (get32(pt) != (uint32_t)u || get32(pt + 4) != (uint32_t)c->index ||
            !shamir_share_ok(pt + 8) || !shamir_share_ok(pt + 8 + SHAMIR_SHARE_BYTES)) {
            st = mop_fail(MOP_E_FORMAT, "%s: the shares from client %d are malformed", fn, (int)u);
            goto out;
        }
        memcpy(got + (size_t)k * 2 * SHAMIR_SHARE_BYTES, pt + 8, 2 * SHAMIR_SHARE_BYTES);
    }
    size_t size = S2_HDR + 8 + L * (size_t)(cfg->bits / 8) + S2_HASH;
    uint8_t *o = buf_reserve(&c->out, size);
    if (!o) {
        st = mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
        goto out;
    }
    secagg_encode(acc, x, (size_t)n_x, cfg->scale, cfg->range, cfg->bits);
    acc[L - 1] = 0; /* check slot */
    seed_hash(key, DOM_SELF, c->b, c->digest, c->index);
    secagg_add_mask(acc, L, key, +1, cfg->bits);
    for (uint32_t k = 0; k < m; k++) {
        int32_t v = (int32_t)get32(e + (size_t)k * S2_SENTRY);
        secagg_add_mask(acc, L, c->mkey + (size_t)v * 32, v > c->index ? +1 : -1, cfg->bits);
    }
    msg_head(o, T_MASKED, (uint32_t)c->index, cfg, c->digest);
    put64(o + S2_HDR, (uint64_t)cfg->length);
    uint8_t *w = o + S2_HDR + 8;
    for (size_t i = 0; i < L; i++) {
        if (cfg->bits == 32) {
            put32(w, (uint32_t)acc[i]);
            w += 4;
        } else {
            put64(w, acc[i]);
            w += 8;
        }
    }
    msg_seal(o, size);
    /* commit: U2 = the senders and this client */
    for (uint32_t k = 0; k < m; k++) {
        uint32_t u = get32(e + (size_t)k * S2_SENTRY);
        c->u2[u] = 1;
        memcpy(c->sh + (size_t)u * 2 * SHAMIR_SHARE_BYTES, got + (size_t)k * 2 * SHAMIR_SHARE_BYTES,
               2 * SHAMIR_SHARE_BYTES);
    }
    c->u2[c->index] = 1;
out:
    sodium_memzero(pt, sizeof pt);
    sodium_memzero(key, sizeof key);
    if (got)
        sodium_memzero(got, (size_t)m * 2 * SHAMIR_SHARE_BYTES);
    if (acc)
        sodium_memzero(acc, L * sizeof *acc);
    mop_free(got);
    mop_free(acc);
    return st;
}

/* Stage unmasking: survivor list in, one share per U2 member out. */
static mop_status client_unmask(mop_secagg2_client *c, const uint8_t *msg, size_t len)
{
    static const char *fn = "mop_secagg2_client_step (unmasking)";
    const secagg_cfg *cfg = &c->cfg;
    int32_t n = cfg->n;
    uint32_t idx = 0, m = 0;
    const uint8_t *body = NULL, *e = NULL;
    size_t nb = 0;
    MOP_TRY(msg_open(msg, len, T_SURV, cfg, c->digest, fn, &idx, &body, &nb));
    if (idx != S2_BROADCAST)
        return mop_fail(MOP_E_FORMAT, "%s: survivor list addressed to %u, expected a broadcast",
                        fn, (unsigned)idx);
    MOP_TRY(list_open(body, nb, 0, 4, n, fn, &m, &e));
    MOP_TRY(ascending(e, m, 4, n, fn));
    int self = 0;
    for (uint32_t k = 0; k < m; k++) {
        uint32_t v = get32(e + 4 * (size_t)k);
        if (!c->u2[v])
            return mop_fail(MOP_E_STATE, "%s: survivor %u did not share its keys; refusing the "
                            "list", fn, (unsigned)v);
        self |= v == (uint32_t)c->index;
    }
    if (!self)
        return mop_fail(MOP_E_STATE, "%s: the survivor list leaves out this client (%d), which "
                        "sent its masked input; refusing the list", fn, (int)c->index);
    if ((int32_t)m < cfg->min_surv)
        return mop_fail(MOP_E_STATE, "%s: %u survivors, fewer than the threshold t = %d: "
                        "refusing to help unmask", fn, (unsigned)m, (int)cfg->min_surv);
    uint8_t *alive = mop_calloc((size_t)n, 1);
    if (!alive)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    for (uint32_t k = 0; k < m; k++)
        alive[get32(e + 4 * (size_t)k)] = 1;
    int32_t n2 = count_set(c->u2, n);
    size_t size = S2_HDR + 8 + (size_t)n2 * S2_UENTRY + S2_HASH;
    uint8_t *o = buf_reserve(&c->out, size);
    if (!o) {
        mop_free(alive);
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    }
    msg_head(o, T_UNMASK, (uint32_t)c->index, cfg, c->digest);
    put32(o + S2_HDR, (uint32_t)n2);
    put32(o + S2_HDR + 4, 0);
    uint8_t *w = o + S2_HDR + 8;
    for (int32_t v = 0; v < n; v++) {
        if (!c->u2[v])
            continue;
        put32(w, (uint32_t)v);
        put32(w + 4, alive[v] ? KIND_B : KIND_S);
        memcpy(w + 8, c->sh + (size_t)v * 2 * SHAMIR_SHARE_BYTES + (alive[v] ? SHAMIR_SHARE_BYTES : 0),
               SHAMIR_SHARE_BYTES);
        w += S2_UENTRY;
    }
    msg_seal(o, size);
    mop_free(alive);
    return MOP_OK;
}

mop_status mop_secagg2_client_step(mop_secagg2_client *c, const uint8_t *msg, size_t n,
                                   const float *x, int64_t n_x, const uint8_t **out,
                                   size_t *n_out)
{
    static const char *fn = "mop_secagg2_client_step";
    MOP_CHECK_ARG(c != NULL);
    MOP_CHECK_ARG(out != NULL);
    MOP_CHECK_ARG(n_out != NULL);
    if (c->stage >= MOP_SECAGG2_DONE)
        return mop_fail(MOP_E_STATE, "%s: client %d already answered a survivor list; "
                        "answering another could reveal both shares of a client", fn,
                        (int)c->index);
    if (c->stage == MOP_SECAGG2_ADVERTISE) {
        if (msg || n)
            return mop_fail(MOP_E_INVALID_ARG, "%s: the first stage (advertise keys) takes no "
                            "message", fn);
    } else if (!msg) {
        return mop_fail(MOP_E_INVALID_ARG, "%s: stage %s needs the server's message", fn,
                        stage_name[c->stage]);
    }
    if (x && c->stage != MOP_SECAGG2_MASKED)
        return mop_fail(MOP_E_INVALID_ARG, "%s: x is given only at the masked-input stage (this "
                        "is stage %s)", fn, stage_name[c->stage]);
    mop_status st;
    switch (c->stage) {
    case MOP_SECAGG2_ADVERTISE: st = client_advertise(c); break;
    case MOP_SECAGG2_SHARE: st = client_share(c, msg, n); break;
    case MOP_SECAGG2_MASKED: st = client_mask(c, msg, n, x, n_x); break;
    default: st = client_unmask(c, msg, n); break;
    }
    if (st != MOP_OK)
        return st;
    c->stage++;
    *out = c->out.p;
    *n_out = c->out.n;
    return MOP_OK;
}

/* ---- server ---- */

struct mop_secagg2_server {
    secagg_cfg cfg;
    uint8_t digest[16];
    int32_t stage;
    uint8_t *pks;         /* (n, 64) */
    uint8_t *in[4];       /* (n) message of stage k received: U1..U4 */
    uint8_t *commit;      /* (n, 32) */
    uint8_t **shares;     /* (n) per sender: its (n1 − 1) share entries */
    uint64_t *acc;        /* (length + 1) */
    uint8_t *ush;         /* (n, n, SHARE): unmasking share from responder r about v */
    float *result;        /* (length) once done */
    s2_buf out;
    int32_t out_for;      /* recipient of out (−2: nothing built) */
};

mop_status mop_secagg2_server_create(const mop_secagg_params *params, mop_secagg2_server **out)
{
    static const char *fn = "mop_secagg2_server_create";
    MOP_CHECK_ARG(out != NULL);
    *out = NULL;
    secagg_cfg cfg;
    MOP_TRY(secagg_cfg_from(&cfg, params, fn));
    if (sodium_init() < 0)
        return mop_fail(MOP_E_INTERNAL, "%s: sodium_init() failed", fn);
    size_t n = (size_t)cfg.n;
    mop_secagg2_server *s = mop_calloc(1, sizeof *s);
    int ok = s != NULL;
    if (ok) {
        s->pks = mop_calloc(n, 64);
        for (int k = 0; k < 4; k++)
            ok &= (s->in[k] = mop_calloc(n, 1)) != NULL;
        s->commit = mop_calloc(n, 32);
        s->shares = mop_calloc(n, sizeof *s->shares);
        s->acc = mop_calloc((size_t)cfg.length + 1, sizeof *s->acc);
        ok &= s->pks && s->commit && s->shares && s->acc;
    }
    if (!ok) {
        mop_secagg2_server_free(s);
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    }
    s->cfg = cfg;
    s->out_for = -2;
    cfg_digest(s->digest, &cfg);
    *out = s;
    return MOP_OK;
}

void mop_secagg2_server_free(mop_secagg2_server *s)
{
    if (!s)
        return;
    if (s->shares)
        for (int32_t i = 0; i < s->cfg.n; i++)
            mop_free(s->shares[i]);
    mop_free(s->shares);
    mop_free(s->pks);
    for (int k = 0; k < 4; k++)
        mop_free(s->in[k]);
    mop_free(s->commit);
    mop_free(s->acc);
    if (s->ush)
        sodium_memzero(s->ush, (size_t)s->cfg.n * (size_t)s->cfg.n * SHAMIR_SHARE_BYTES);
    mop_free(s->ush);
    mop_free(s->result);
    buf_free(&s->out);
    mop_free(s);
}

static const uint32_t stage_type[4] = {T_ADV, T_SHARES, T_MASKED, T_UNMASK};

mop_status mop_secagg2_server_receive(mop_secagg2_server *s, const uint8_t *msg, size_t len)
{
    static const char *fn = "mop_secagg2_server_receive";
    MOP_CHECK_ARG(s != NULL);
    MOP_CHECK_ARG(msg != NULL);
    const secagg_cfg *cfg = &s->cfg;
    int32_t n = cfg->n;
    if (s->stage >= MOP_SECAGG2_DONE)
        return mop_fail(MOP_E_STATE, "%s: the round is done", fn);
    uint32_t u = 0, m = 0;
    const uint8_t *body = NULL, *e = NULL;
    size_t nb = 0;
    MOP_TRY(msg_open(msg, len, stage_type[s->stage], cfg, s->digest, fn, &u, &body, &nb));
    if (u >= (uint32_t)n)
        return mop_fail(MOP_E_FORMAT, "%s: sender %u not in 0..%d", fn, (unsigned)u, (int)n - 1);
    if (s->in[s->stage][u])
        return mop_fail(MOP_E_STATE, "%s: client %u already sent its %s", fn, (unsigned)u,
                        type_name(stage_type[s->stage]));
    if (s->stage > 0 && !s->in[s->stage - 1][u])
        return mop_fail(MOP_E_STATE, "%s: client %u dropped out before stage %s (it is not in "
                        "the previous stage's list)", fn, (unsigned)u, stage_name[s->stage]);
    switch (s->stage) {
    case MOP_SECAGG2_ADVERTISE:
        if (nb != 64)
            return mop_fail(MOP_E_FORMAT, "%s: key advertisement body of %zu bytes, expected 64",
                            fn, nb);
        if (memcmp(body, body + 32, 32) == 0)
            return mop_fail(MOP_E_STATE, "%s: client %u advertises the same key twice", fn,
                            (unsigned)u);
        for (int32_t j = 0; j < n; j++)
            for (int a = 0; s->in[0][j] && a < 2; a++)
                for (int b = 0; b < 2; b++)
                    if (memcmp(body + 32 * a, s->pks + (size_t)j * 64 + 32 * b, 32) == 0)
                        return mop_fail(MOP_E_STATE, "%s: client %u advertises a public key of "
                                        "client %d", fn, (unsigned)u, (int)j);
        memcpy(s->pks + (size_t)u * 64, body, 64);
        break;
    case MOP_SECAGG2_SHARE: {
        MOP_TRY(list_open(body, nb, 32, S2_SENTRY, n, fn, &m, &e));
        MOP_TRY(ascending(e, m, S2_SENTRY, n, fn));
        int32_t n1 = count_set(s->in[0], n);
        if ((int32_t)m != n1 - 1)
            return mop_fail(MOP_E_STATE, "%s: client %u sent shares for %u clients, the key "
                            "list has %d others", fn, (unsigned)u, (unsigned)m, (int)n1 - 1);
        for (uint32_t k = 0; k < m; k++) {
            uint32_t v = get32(e + (size_t)k * S2_SENTRY);
            if (v == u || !s->in[0][v])
                return mop_fail(MOP_E_STATE, "%s: client %u sent shares for client %u, which is "
                                "%s", fn, (unsigned)u, (unsigned)v,
                                v == u ? "itself" : "not in the key list");
        }
        uint8_t *copy = mop_alloc((size_t)m * S2_SENTRY + 1);
        if (!copy)
            return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
        memcpy(copy, e, (size_t)m * S2_SENTRY);
        s->shares[u] = copy;
        memcpy(s->commit + (size_t)u * 32, body, 32);
        break;
    }
    case MOP_SECAGG2_MASKED: {
        size_t w = (size_t)cfg->bits / 8, L = (size_t)cfg->length + 1;
        if (nb < 8 || get64(body) != (uint64_t)cfg->length)
            return mop_fail(MOP_E_SHAPE, "%s: masked input of length %llu, the round has %lld",
                            fn, nb < 8 ? 0ULL : (unsigned long long)get64(body),
                            (long long)cfg->length);
        if (nb != 8 + L * w)
            return mop_fail(MOP_E_FORMAT, "%s: masked input body of %zu bytes, expected %zu", fn,
                            nb, 8 + L * w);
        uint64_t mask = secagg_ring_mask(cfg->bits);
        const uint8_t *p = body + 8;
        for (size_t i = 0; i < L; i++) {
            uint64_t v = w == 4 ? get32(p + 4 * i) : get64(p + 8 * i);
            s->acc[i] = (s->acc[i] + v) & mask;
        }
        break;
    }
    default: { /* unmasking */
        MOP_TRY(list_open(body, nb, 0, S2_UENTRY, n, fn, &m, &e));
        MOP_TRY(ascending(e, m, S2_UENTRY, n, fn));
        int32_t n2 = count_set(s->in[1], n);
        if ((int32_t)m != n2)
            return mop_fail(MOP_E_STATE, "%s: client %u sent %u shares, expected one per client "
                            "of the share stage (%d)", fn, (unsigned)u, (unsigned)m, (int)n2);
        for (uint32_t k = 0; k < m; k++) {
            const uint8_t *ek = e + (size_t)k * S2_UENTRY;
            uint32_t v = get32(ek), kind = get32(ek + 4);
            if (!s->in[1][v])
                return mop_fail(MOP_E_STATE, "%s: client %u sent a share about client %u, which "
                                "did not share keys", fn, (unsigned)u, (unsigned)v);
            uint32_t want = s->in[2][v] ? KIND_B : KIND_S;
            if (kind != want)
                return mop_fail(MOP_E_STATE, "%s: client %u sent the %s share of client %u, "
                                "which %s", fn, (unsigned)u, kind == KIND_B ? "self-mask" : "key",
                                (unsigned)v, s->in[2][v] ? "survived (its self-mask share is due)"
                                                         : "dropped (its key share is due)");
            if (!shamir_share_ok(ek + 8))
                return mop_fail(MOP_E_FORMAT, "%s: client %u's share about client %u is "
                                "malformed", fn, (unsigned)u, (unsigned)v);
        }
        for (uint32_t k = 0; k < m; k++) {
            const uint8_t *ek = e + (size_t)k * S2_UENTRY;
            memcpy(s->ush + ((size_t)u * (size_t)n + get32(ek)) * SHAMIR_SHARE_BYTES, ek + 8,
                   SHAMIR_SHARE_BYTES);
        }
        break;
    }
    }
    s->in[s->stage][u] = 1;
    return MOP_OK;
}

/* Reconstruct the secret of client v from the responders' shares. */
static mop_status reconstruct(const mop_secagg2_server *s, int32_t v, const int32_t *resp,
                              int32_t nr, uint8_t secret[32], uint8_t *tmp, uint32_t *xs,
                              const char *fn)
{
    int32_t n = s->cfg.n;
    for (int32_t i = 0; i < nr; i++) {
        memcpy(tmp + (size_t)i * SHAMIR_SHARE_BYTES,
               s->ush + ((size_t)resp[i] * (size_t)n + (size_t)v) * SHAMIR_SHARE_BYTES,
               SHAMIR_SHARE_BYTES);
        xs[i] = (uint32_t)resp[i] + 1;
    }
    int32_t bad;
    if (shamir_combine(secret, tmp, xs, nr, s->cfg.min_surv, &bad) != 0)
        return mop_fail(MOP_E_CHECKSUM, "%s: the shares of client %d's %s disagree%s", fn, (int)v,
                        s->in[2][v] ? "self-mask seed" : "mask key",
                        bad >= 0 ? " (some client sent a wrong share)" : "");
    return MOP_OK;
}

static mop_status server_unmask(mop_secagg2_server *s)
{
    static const char *fn = "mop_secagg2_server_advance (unmasking)";
    const secagg_cfg *cfg = &s->cfg;
    int32_t n = cfg->n;
    size_t L = (size_t)cfg->length + 1;
    mop_status st = MOP_OK;
    int32_t *resp = mop_alloc((size_t)n * sizeof *resp);
    uint32_t *xs = mop_alloc((size_t)n * sizeof *xs);
    uint8_t *tmp = mop_alloc((size_t)n * SHAMIR_SHARE_BYTES);
    uint64_t *acc = mop_alloc(L * sizeof *acc);
    float *res = mop_alloc((size_t)cfg->length * sizeof *res);
    uint8_t secret[32], key[32], pk[32];
    if (!resp || !xs || !tmp || !acc || !res) {
        st = mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
        goto out;
    }
    int32_t nr = 0;
    for (int32_t r = 0; r < n; r++)
        if (s->in[3][r])
            resp[nr++] = r;
    memcpy(acc, s->acc, L * sizeof *acc);
    for (int32_t v = 0; v < n && st == MOP_OK; v++) {
        if (!s->in[1][v])
            continue;
        if ((st = reconstruct(s, v, resp, nr, secret, tmp, xs, fn)) != MOP_OK)
            break;
        if (s->in[2][v]) { /* survivor: remove its self-mask */
            seed_hash(key, DOM_COMMIT, secret, s->digest, v);
            if (sodium_memcmp(key, s->commit + (size_t)v * 32, 32) != 0) {
                st = mop_fail(MOP_E_CHECKSUM, "%s: client %d's reconstructed self-mask seed does "
                              "not match its commitment (some client sent a wrong share)", fn,
                              (int)v);
                break;
            }
            seed_hash(key, DOM_SELF, secret, s->digest, v);
            secagg_add_mask(acc, L, key, -1, cfg->bits);
        } else { /* dropped after sharing: remove its masks with every survivor */
            crypto_scalarmult_base(pk, secret);
            if (sodium_memcmp(pk, s->pks + (size_t)v * 64 + 32, 32) != 0) {
                st = mop_fail(MOP_E_CHECKSUM, "%s: client %d's reconstructed mask key does not "
                              "match its public key (some client sent a wrong share)", fn, (int)v);
                break;
            }
            for (int32_t u = 0; u < n; u++) {
                if (!s->in[2][u])
                    continue;
                if (pair_key(key, DOM_MASK, s->digest, secret, v, s->pks + (size_t)v * 64 + 32, u,
                             s->pks + (size_t)u * 64 + 32) != 0) {
                    st = mop_fail(MOP_E_STATE, "%s: client %d's mask key is a low-order point",
                                  fn, (int)u);
                    break;
                }
                /* survivor u added +m_uv if v > u, −m_uv if v < u */
                secagg_add_mask(acc, L, key, v > u ? -1 : +1, cfg->bits);
            }
        }
    }
    if (st != MOP_OK)
        goto out;
    if ((acc[L - 1] & secagg_ring_mask(cfg->bits)) != 0) {
        st = mop_fail(MOP_E_CHECKSUM, "%s: the masks did not cancel (check slot nonzero): a "
                      "client masked with other keys than it shared", fn);
        goto out;
    }
    secagg_decode(res, acc, (size_t)cfg->length, cfg->scale, cfg->bits);
    s->result = res;
    res = NULL;
out:
    sodium_memzero(secret, sizeof secret);
    sodium_memzero(key, sizeof key);
    if (tmp)
        sodium_memzero(tmp, (size_t)n * SHAMIR_SHARE_BYTES);
    mop_free(resp);
    mop_free(xs);
    mop_free(tmp);
    mop_free(acc);
    mop_free(res);
    return st;
}

mop_status mop_secagg2_server_advance(mop_secagg2_server *s)
{
    static const char *fn = "mop_secagg2_server_advance";
    MOP_CHECK_ARG(s != NULL);
    const secagg_cfg *cfg = &s->cfg;
    int32_t n = cfg->n;
    if (s->stage >= MOP_SECAGG2_DONE)
        return mop_fail(MOP_E_STATE, "%s: the round is done", fn);
    int32_t k = count_set(s->in[s->stage], n);
    if (k < cfg->min_surv)
        return mop_fail(MOP_E_STATE, "%s: %d of %d clients sent their %s, fewer than the "
                        "threshold t = %d: the round cannot go on (refusing to %s)", fn, (int)k,
                        (int)n, type_name(stage_type[s->stage]), (int)cfg->min_surv,
                        s->stage == MOP_SECAGG2_UNMASK ? "unmask" : "continue");
    if (s->stage == MOP_SECAGG2_MASKED && !s->ush) {
        s->ush = mop_calloc((size_t)n * (size_t)n, SHAMIR_SHARE_BYTES);
        if (!s->ush)
            return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    }
    if (s->stage == MOP_SECAGG2_UNMASK)
        MOP_TRY(server_unmask(s));
    s->stage++;
    s->out_for = -2;
    return MOP_OK;
}

/* Build a broadcast list of the members of f: KEYS (with keys) or SURV. */
static mop_status build_list(mop_secagg2_server *s, uint32_t type, const uint8_t *f)
{
    int32_t n = s->cfg.n, m = count_set(f, n);
    size_t es = type == T_KEYS ? S2_KENTRY : 4;
    size_t size = S2_HDR + 8 + (size_t)m * es + S2_HASH;
    uint8_t *o = buf_reserve(&s->out, size);
    if (!o)
        return mop_fail(MOP_E_NOMEM, "mop_secagg2_server_message: out of memory");
    msg_head(o, type, S2_BROADCAST, &s->cfg, s->digest);
    put32(o + S2_HDR, (uint32_t)m);
    put32(o + S2_HDR + 4, 0);
    uint8_t *w = o + S2_HDR + 8;
    for (int32_t j = 0; j < n; j++) {
        if (!f[j])
            continue;
        put32(w, (uint32_t)j);
        if (type == T_KEYS)
            memcpy(w + 4, s->pks + (size_t)j * 64, 64);
        w += es;
    }
    msg_seal(o, size);
    return MOP_OK;
}

/* The shares addressed to v from every other member of U2. */
static mop_status build_fwd(mop_secagg2_server *s, int32_t v)
{
    int32_t n = s->cfg.n, n1 = count_set(s->in[0], n), m = count_set(s->in[1], n) - 1;
    size_t size = S2_HDR + 8 + (size_t)m * S2_SENTRY + S2_HASH;
    uint8_t *o = buf_reserve(&s->out, size);
    if (!o)
        return mop_fail(MOP_E_NOMEM, "mop_secagg2_server_message: out of memory");
    msg_head(o, T_FWD, (uint32_t)v, &s->cfg, s->digest);
    put32(o + S2_HDR, (uint32_t)m);
    put32(o + S2_HDR + 4, 0);
    uint8_t *w = o + S2_HDR + 8;
    for (int32_t u = 0; u < n; u++) {
        if (u == v || !s->in[1][u])
            continue;
        const uint8_t *e = s->shares[u];
        int32_t k = 0;
        while (k < n1 - 1 && get32(e + (size_t)k * S2_SENTRY) != (uint32_t)v)
            k++; /* present: receive() checked the entries cover U1 \ {u} */
        put32(w, (uint32_t)u);
        memcpy(w + 4, e + (size_t)k * S2_SENTRY + 4, S2_CT);
        w += S2_SENTRY;
    }
    msg_seal(o, size);
    return MOP_OK;
}

mop_status mop_secagg2_server_message(mop_secagg2_server *s, int32_t index, const uint8_t **out,
                                      size_t *n_out)
{
    static const char *fn = "mop_secagg2_server_message";
    MOP_CHECK_ARG(s != NULL);
    MOP_CHECK_ARG(out != NULL);
    MOP_CHECK_ARG(n_out != NULL);
    if (index < 0 || index >= s->cfg.n)
        return mop_fail(MOP_E_INVALID_ARG, "%s: index %d not in 0..%d", fn, (int)index,
                        (int)s->cfg.n - 1);
    if (s->stage == MOP_SECAGG2_ADVERTISE || s->stage == MOP_SECAGG2_DONE)
        return mop_fail(MOP_E_STATE, "%s: no server message at stage %s", fn,
                        stage_name[s->stage]);
    const uint8_t *f = s->in[s->stage - 1];
    if (!f[index])
        return mop_fail(MOP_E_STATE, "%s: client %d dropped out before stage %s", fn, (int)index,
                        stage_name[s->stage]);
    int32_t key = s->stage == MOP_SECAGG2_MASKED ? index : -1;
    if (s->out_for != key) {
        mop_status st = s->stage == MOP_SECAGG2_SHARE    ? build_list(s, T_KEYS, s->in[0])
                        : s->stage == MOP_SECAGG2_MASKED ? build_fwd(s, index)
                                                         : build_list(s, T_SURV, s->in[2]);
        if (st != MOP_OK) {
            s->out_for = -2;
            return st;
        }
        s->out_for = key;
    }
    *out = s->out.p;
    *n_out = s->out.n;
    return MOP_OK;
}

mop_status mop_secagg2_server_result(const mop_secagg2_server *s, float *sum, int64_t n,
                                     int32_t *included, int32_t *n_included)
{
    static const char *fn = "mop_secagg2_server_result";
    MOP_CHECK_ARG(s != NULL);
    MOP_CHECK_ARG(sum != NULL);
    if (n != s->cfg.length)
        return mop_fail(MOP_E_SHAPE, "%s: output of %lld floats, the round has length %lld", fn,
                        (long long)n, (long long)s->cfg.length);
    if (s->stage != MOP_SECAGG2_DONE || !s->result)
        return mop_fail(MOP_E_STATE, "%s: the round is at stage %s, not done", fn,
                        stage_name[s->stage]);
    memcpy(sum, s->result, (size_t)n * sizeof *sum);
    int32_t k = 0;
    for (int32_t i = 0; i < s->cfg.n; i++)
        if (s->in[2][i]) {
            if (included)
                included[k] = i;
            k++;
        }
    if (n_included)
        *n_included = k;
    return MOP_OK;
}
