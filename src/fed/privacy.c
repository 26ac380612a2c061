/* Differential-privacy primitives on updates: global L2 clipping and
 * Gaussian noise drawn from a ChaCha20 keystream (libsodium).
 *
 *   clip:  u ← u · min(1, C / ‖u‖₂)          (all tensors but "gate.usage")
 *   noise: u ← u + std · N(0, I)             (Box–Muller on ChaCha20 words)
 */
#include <math.h>
#include <string.h>

#include <sodium.h>

#include "byte_order.h"
#include "fed.h"
#include "internal.h"

static int privacy_skip(const fed_tensor *t)
{
    return strcmp(t->name, FED_USAGE_NAME) == 0;
}

/* ‖u‖₂ over the clipped tensors, accumulated in double. */
static double privacy_norm(const mop_update *u)
{
    double ss = 0.0;
    for (int32_t t = 0; t < u->n_tensors; t++) {
        const fed_tensor *ft = &u->tensors[t];
        if (privacy_skip(ft))
            continue;
        for (int64_t i = 0; i < ft->size; i++)
            ss += (double)ft->data[i] * (double)ft->data[i];
    }
    return sqrt(ss);
}

static void privacy_scale(mop_update *u, float factor)
{
    for (int32_t t = 0; t < u->n_tensors; t++) {
        fed_tensor *ft = &u->tensors[t];
        if (privacy_skip(ft))
            continue;
        for (int64_t i = 0; i < ft->size; i++)
            ft->data[i] *= factor;
    }
}

mop_status mop_update_clip(mop_update *u, float max_norm, float *norm_before)
{
    MOP_CHECK_ARG(u != NULL);
    if (!(isfinite(max_norm) && max_norm > 0.0f))
        return mop_fail(MOP_E_INVALID_ARG, "mop_update_clip: max_norm must be finite and > 0, got %g",
                        (double)max_norm);
    double norm = privacy_norm(u);
    if (norm_before)
        *norm_before = (float)norm;
    if (norm <= (double)max_norm)
        return MOP_OK;
    privacy_scale(u, (float)((double)max_norm / norm));
    /* Float rounding may leave the norm a few ulps above C: shrink by one
     * ulp of the factor until it is not (at most a handful of passes). */
    for (int pass = 0; pass < 8 && privacy_norm(u) > (double)max_norm; pass++)
        privacy_scale(u, 1.0f - 0x1p-23f);
    return MOP_OK;
}

/* ---- Gaussian noise from a ChaCha20 keystream ---- */

#define NOISE_CHUNK 4096 /* keystream bytes per libsodium call (64 ChaCha20 blocks) */

typedef struct noise_stream {
    uint8_t key[crypto_stream_chacha20_KEYBYTES];
    uint8_t buf[NOISE_CHUNK];
    size_t pos;       /* next unread byte of buf */
    uint64_t block;   /* ChaCha20 block counter of the next chunk */
    int have_spare;
    double spare;     /* second Box–Muller output */
} noise_stream;

static void noise_refill(noise_stream *s)
{
    static const uint8_t nonce[crypto_stream_chacha20_NONCEBYTES] = {0};
    memset(s->buf, 0, sizeof s->buf);
    crypto_stream_chacha20_xor_ic(s->buf, s->buf, sizeof s->buf, nonce, s->block, s->key);
    s->block += NOISE_CHUNK / 64;
    s->pos = 0;
}

static uint64_t noise_u64(noise_stream *s)
{
    if (s->pos + 8 > NOISE_CHUNK)
        noise_refill(s);
    uint64_t v = mop_get_le64(s->buf + s->pos);
    s->pos += 8;
    return v;
}

/* Standard normal by Box–Muller: u1 ∈ (0, 1], u2 ∈ [0, 1) with 53 bits each;
 * z0 = √(−2 ln u1)·cos 2πu2, z1 = √(−2 ln u1)·sin 2πu2. */
static double noise_normal(noise_stream *s)
{
    if (s->have_spare) {
        s->have_spare = 0;
        return s->spare;
    }
    double u1 = (double)((noise_u64(s) >> 11) + 1) * 0x1p-53;
    double u2 = (double)(noise_u64(s) >> 11) * 0x1p-53;
    double r = sqrt(-2.0 * log(u1));
    double a = 2.0 * 3.14159265358979323846 * u2;
    s->spare = r * sin(a);
    s->have_spare = 1;
    return r * cos(a);
}

mop_status mop_update_add_noise(mop_update *u, float std, uint64_t seed)
{
    MOP_CHECK_ARG(u != NULL);
    if (!(isfinite(std) && std >= 0.0f))
        return mop_fail(MOP_E_INVALID_ARG,
                        "mop_update_add_noise: std must be finite and >= 0, got %g", (double)std);
    if (std == 0.0f)
        return MOP_OK;
    if (sodium_init() < 0)
        return mop_fail(MOP_E_INTERNAL, "mop_update_add_noise: sodium_init() failed");
    noise_stream *s = mop_alloc(sizeof *s);
    if (!s)
        return mop_fail(MOP_E_NOMEM, "mop_update_add_noise: out of memory");
    if (seed == 0) {
        randombytes_buf(s->key, sizeof s->key);
    } else {
        static const char domain[] = "libmop-dp-noise-v1";
        uint8_t in[sizeof domain - 1 + 8];
        memcpy(in, domain, sizeof domain - 1);
        mop_put_le64(in + sizeof domain - 1, seed);
        crypto_generichash(s->key, sizeof s->key, in, sizeof in, NULL, 0);
    }
    s->block = 0;
    s->have_spare = 0;
    noise_refill(s);
    for (int32_t t = 0; t < u->n_tensors; t++) {
        fed_tensor *ft = &u->tensors[t];
        if (privacy_skip(ft))
            continue;
        for (int64_t i = 0; i < ft->size; i++)
            ft->data[i] = (float)((double)ft->data[i] + (double)std * noise_normal(s));
    }
    sodium_memzero(s, sizeof *s);
    mop_free(s);
    return MOP_OK;
}
