/* Test helper: writes GGUF images in memory, field by field, so tests can
 * build valid files and then break exactly one thing. Also builds a tiny
 * llama model whose every tensor comes with its expected F32 values,
 * computed here from the block formulas (independently of src/core). */
#ifndef MOP_TEST_GGUF_BUILDER_H
#define MOP_TEST_GGUF_BUILDER_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- growing byte buffer ---------------------------------------------------- */

typedef struct gb_buf {
    uint8_t *p;
    size_t n, cap;
} gb_buf;

static inline void gb_put(gb_buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}

static inline void gb_u8(gb_buf *b, uint8_t v) { gb_put(b, &v, 1); }
static inline void gb_u16(gb_buf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    gb_put(b, x, 2);
}
static inline void gb_u32(gb_buf *b, uint32_t v)
{
    uint8_t x[4];
    for (int i = 0; i < 4; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    gb_put(b, x, 4);
}
static inline void gb_u64(gb_buf *b, uint64_t v)
{
    uint8_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    gb_put(b, x, 8);
}
static inline void gb_f32(gb_buf *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    gb_u32(b, u);
}
static inline void gb_strn(gb_buf *b, const char *s, size_t n)
{
    gb_u64(b, n);
    gb_put(b, s, n);
}
static inline void gb_str(gb_buf *b, const char *s) { gb_strn(b, s, strlen(s)); }

/* ---- GGUF images ---------------------------------------------------------------- */

enum { GB_U8 = 0, GB_I8, GB_U16, GB_I16, GB_U32, GB_I32, GB_F32, GB_BOOL, GB_STR, GB_ARR,
       GB_U64, GB_I64, GB_F64 };

#define GB_MAX_TENSORS 64

typedef struct gb_tensor {
    char name[96];
    uint32_t type, n_dims;
    uint64_t ne[4];     /* GGUF order: ne[0] is the contiguous dimension */
    uint8_t *data;      /* owned */
    size_t nbytes;
    float *expect;      /* owned: the F32 values, row-major in libmop order */
    int has_offset;     /* 1: write `offset` instead of the computed one */
    uint64_t offset;
} gb_tensor;

typedef struct gguf_builder {
    uint32_t version;
    uint64_t align;          /* alignment used to lay out the data */
    gb_buf kv;
    uint64_t n_kv;
    gb_tensor t[GB_MAX_TENSORS];
    int n_t;
    int64_t n_kv_override, n_t_override; /* -1: the true counts */
    /* filled by gb_finish */
    size_t info_off[GB_MAX_TENSORS]; /* where tensor info i starts */
    size_t data_off[GB_MAX_TENSORS]; /* where tensor i's data starts in the image */
    size_t kv_start, infos_end, data_start;
} gguf_builder;

static inline void gb_init(gguf_builder *b)
{
    memset(b, 0, sizeof *b);
    b->version = 3;
    b->align = 32;
    b->n_kv_override = b->n_t_override = -1;
}

static inline void gb_release(gguf_builder *b)
{
    free(b->kv.p);
    for (int i = 0; i < b->n_t; i++) {
        free(b->t[i].data);
        free(b->t[i].expect);
    }
    memset(b, 0, sizeof *b);
}

static inline void gb_key(gguf_builder *b, const char *key, uint32_t type)
{
    gb_str(&b->kv, key);
    gb_u32(&b->kv, type);
    b->n_kv++;
}
static inline void gb_kv_u32(gguf_builder *b, const char *k, uint32_t v) { gb_key(b, k, GB_U32); gb_u32(&b->kv, v); }
static inline void gb_kv_i32(gguf_builder *b, const char *k, int32_t v) { gb_key(b, k, GB_I32); gb_u32(&b->kv, (uint32_t)v); }
static inline void gb_kv_u64(gguf_builder *b, const char *k, uint64_t v) { gb_key(b, k, GB_U64); gb_u64(&b->kv, v); }
static inline void gb_kv_f32(gguf_builder *b, const char *k, float v) { gb_key(b, k, GB_F32); gb_f32(&b->kv, v); }
static inline void gb_kv_bool(gguf_builder *b, const char *k, int v) { gb_key(b, k, GB_BOOL); gb_u8(&b->kv, (uint8_t)v); }
static inline void gb_kv_str(gguf_builder *b, const char *k, const char *v) { gb_key(b, k, GB_STR); gb_str(&b->kv, v); }
static inline void gb_kv_arr_str(gguf_builder *b, const char *k, const char *const *v, size_t n)
{
    gb_key(b, k, GB_ARR);
    gb_u32(&b->kv, GB_STR);
    gb_u64(&b->kv, n);
    for (size_t i = 0; i < n; i++)
        gb_str(&b->kv, v[i]);
}
static inline void gb_kv_arr_i32(gguf_builder *b, const char *k, const int32_t *v, size_t n)
{
    gb_key(b, k, GB_ARR);
    gb_u32(&b->kv, GB_I32);
    gb_u64(&b->kv, n);
    for (size_t i = 0; i < n; i++)
        gb_u32(&b->kv, (uint32_t)v[i]);
}

/* Add a tensor with dims in libmop order (dims[0] = rows); data is copied. */
static inline gb_tensor *gb_tensor_add(gguf_builder *b, const char *name, uint32_t type, int n_dims,
                                const int64_t *dims, const void *data, size_t nbytes)
{
    gb_tensor *t = &b->t[b->n_t++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = (uint32_t)n_dims;
    for (int i = 0; i < n_dims; i++)
        t->ne[i] = (uint64_t)dims[n_dims - 1 - i];
    t->data = malloc(nbytes ? nbytes : 1);
    if (nbytes)
        memcpy(t->data, data, nbytes);
    t->nbytes = nbytes;
    return t;
}

static inline uint64_t gb_align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Serialise; returns a malloc'ed image. */
static inline uint8_t *gb_finish(gguf_builder *b, size_t *size)
{
    gb_buf o = {0};
    gb_put(&o, "GGUF", 4);
    gb_u32(&o, b->version);
    gb_u64(&o, b->n_t_override >= 0 ? (uint64_t)b->n_t_override : (uint64_t)b->n_t);
    gb_u64(&o, b->n_kv_override >= 0 ? (uint64_t)b->n_kv_override : b->n_kv);
    b->kv_start = o.n;
    gb_put(&o, b->kv.p, b->kv.n);
    uint64_t off = 0, offs[GB_MAX_TENSORS];
    for (int i = 0; i < b->n_t; i++) {
        gb_tensor *t = &b->t[i];
        b->info_off[i] = o.n;
        gb_str(&o, t->name);
        gb_u32(&o, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims && d < 4; d++)
            gb_u64(&o, t->ne[d]);
        gb_u32(&o, t->type);
        offs[i] = off;
        gb_u64(&o, t->has_offset ? t->offset : off);
        off = gb_align_up(off + t->nbytes, b->align);
    }
    b->infos_end = o.n;
    if (b->n_t) {
        while (o.n % b->align)
            gb_u8(&o, 0);
        b->data_start = o.n;
        for (int i = 0; i < b->n_t; i++) {
            while (o.n < b->data_start + offs[i])
                gb_u8(&o, 0);
            b->data_off[i] = o.n;
            gb_put(&o, b->t[i].data, b->t[i].nbytes);
        }
        while (o.n % b->align)
            gb_u8(&o, 0);
    }
    *size = o.n;
    return o.p;
}

/* ---- values with exact encodings -------------------------------------------------- */

static inline uint32_t gb_rand(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* binary16 bits of x, which must be 0 or a normal half exactly. */
static inline uint16_t gb_half_exact(double x)
{
    if (x == 0)
        return 0;
    uint16_t sign = x < 0 ? 0x8000 : 0;
    int e;
    double m = frexp(fabs(x), &e); /* |x| = m 2^e, m in [0.5, 1) */
    uint16_t mant = (uint16_t)((m * 2 - 1) * 1024);
    return (uint16_t)(sign | ((e - 1 + 15) << 10) | mant);
}

/* A scale d = k/64 (k in 1..8): exact in binary16 and products with small
 * integers are exact in float. */
static inline double gb_scale(uint32_t *seed) { return (double)(1 + gb_rand(seed) % 8) / 64.0; }

/* Fill t->data (type) and t->expect for rows x cols values from seed. */
static inline void gb_fill(gb_tensor *t, int64_t rows, int64_t cols, uint32_t *seed)
{
    int64_t n = rows * cols, nb = n / 32;
    float *e = malloc((size_t)n * sizeof *e);
    uint8_t *d = NULL;
    size_t nbytes = 0;
    switch (t->type) {
    case 0: /* F32 */
        nbytes = (size_t)n * 4;
        d = malloc(nbytes);
        for (int64_t i = 0; i < n; i++) {
            e[i] = (float)((double)(gb_rand(seed) % 2001) / 1000.0 - 1.0);
            memcpy(d + 4 * i, &e[i], 4);
        }
        break;
    case 1: /* F16: k/256 with |k| <= 256 */
        nbytes = (size_t)n * 2;
        d = malloc(nbytes);
        for (int64_t i = 0; i < n; i++) {
            double x = (double)((int)(gb_rand(seed) % 513) - 256) / 256.0;
            uint16_t h = gb_half_exact(x);
            d[2 * i] = (uint8_t)h;
            d[2 * i + 1] = (uint8_t)(h >> 8);
            e[i] = (float)x;
        }
        break;
    case 30: /* BF16: the top half of a float */
        nbytes = (size_t)n * 2;
        d = malloc(nbytes);
        for (int64_t i = 0; i < n; i++) {
            float f = (float)((double)(gb_rand(seed) % 2001) / 1000.0 - 1.0);
            uint32_t u;
            memcpy(&u, &f, 4);
            d[2 * i] = (uint8_t)(u >> 16);
            d[2 * i + 1] = (uint8_t)(u >> 24);
            u &= 0xffff0000u;
            memcpy(&e[i], &u, 4);
        }
        break;
    case 8: /* Q8_0: d, q[32]; x = d q */
        nbytes = (size_t)nb * 34;
        d = malloc(nbytes);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = d + 34 * b;
            double sc = gb_scale(seed);
            uint16_t h = gb_half_exact(sc);
            blk[0] = (uint8_t)h;
            blk[1] = (uint8_t)(h >> 8);
            for (int j = 0; j < 32; j++) {
                int q = (int)(gb_rand(seed) % 255) - 127;
                blk[2 + j] = (uint8_t)(int8_t)q;
                e[32 * b + j] = (float)(sc * q);
            }
        }
        break;
    case 2: /* Q4_0: d, 16 bytes; element j low nibble of byte j, j+16 high nibble */
    case 3: /* Q4_1: d, m, 16 bytes; x = d q + m */
    {
        int has_m = t->type == 3;
        size_t bs = has_m ? 20 : 18;
        nbytes = (size_t)nb * bs;
        d = malloc(nbytes);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = d + bs * b;
            double sc = gb_scale(seed);
            double mn = has_m ? (double)((int)(gb_rand(seed) % 17) - 8) / 32.0 : 0.0;
            uint16_t h = gb_half_exact(sc), hm = gb_half_exact(mn);
            blk[0] = (uint8_t)h;
            blk[1] = (uint8_t)(h >> 8);
            if (has_m) {
                blk[2] = (uint8_t)hm;
                blk[3] = (uint8_t)(hm >> 8);
            }
            uint8_t *qs = blk + (has_m ? 4 : 2);
            for (int j = 0; j < 16; j++) {
                int lo = (int)(gb_rand(seed) % 16), hi = (int)(gb_rand(seed) % 16);
                qs[j] = (uint8_t)(lo | hi << 4);
                e[32 * b + j] = (float)(has_m ? sc * lo + mn : sc * (lo - 8));
                e[32 * b + j + 16] = (float)(has_m ? sc * hi + mn : sc * (hi - 8));
            }
        }
        break;
    }
    default:
        abort();
    }
    free(t->data);
    t->data = d;
    t->nbytes = nbytes;
    t->expect = e;
}

/* ---- a tiny llama model ------------------------------------------------------------ */

typedef struct tiny_opts {
    int n_layer, d, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    float theta, eps;
    int untied;              /* add output.weight */
    uint32_t type_q, type_k, type_v, type_o, type_gate, type_up, type_down, type_embd;
    const char *skip;        /* omit this tensor */
    const char *bad_shape;   /* give this tensor one extra row */
    int no_head_count_kv;    /* omit attention.head_count_kv (then n_head_kv must equal n_head) */
    float rope_linear;       /* >0: rope.scaling.type = linear with this factor */
    const char *arch;        /* default "llama" */
} tiny_opts;

static inline tiny_opts tiny_defaults(void)
{
    tiny_opts o = {2, 32, 2, 1, 64, 32, 128, 10000.0f, 1e-5f, 0, 8, 2, 3, 1, 30, 0, 0, 8,
                   NULL, NULL, 0, 0.0f, NULL};
    return o;
}

/* 32 tokens: 3 control tokens, a..z, then "ab", "Ġ", "Ġa"; merges a+b, Ġ+a. */
static inline void tiny_tokenizer(gguf_builder *b, int n_vocab)
{
    static const char *base[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    const char *tok[64];
    char letters[26][2];
    int32_t types[64];
    int n = 0;
    for (int i = 0; i < 3; i++) {
        types[n] = 3;
        tok[n++] = base[i];
    }
    for (int i = 0; i < 26; i++) {
        letters[i][0] = (char)('a' + i);
        letters[i][1] = 0;
        types[n] = 1;
        tok[n++] = letters[i];
    }
    types[n] = 1;
    tok[n++] = "ab";
    types[n] = 1;
    tok[n++] = "\xc4\xa0"; /* "Ġ", the GPT-2 stand-in for a space */
    types[n] = 1;
    tok[n++] = "\xc4\xa0" "a";
    (void)n_vocab;
    static const char *merges[] = {"a b", "\xc4\xa0 a"};
    gb_kv_str(b, "tokenizer.ggml.model", "gpt2");
    gb_kv_str(b, "tokenizer.ggml.pre", "smollm");
    gb_kv_arr_str(b, "tokenizer.ggml.tokens", tok, (size_t)n);
    gb_kv_arr_i32(b, "tokenizer.ggml.token_type", types, (size_t)n);
    gb_kv_arr_str(b, "tokenizer.ggml.merges", merges, 2);
    gb_kv_u32(b, "tokenizer.ggml.bos_token_id", 1);
    gb_kv_u32(b, "tokenizer.ggml.eos_token_id", 2);
    gb_kv_u32(b, "tokenizer.ggml.padding_token_id", 2);
    gb_kv_bool(b, "tokenizer.ggml.add_bos_token", 0);
}

static inline void tiny_tensor(gguf_builder *b, const tiny_opts *o, const char *name, uint32_t type,
                        int64_t rows, int64_t cols, int n_dims, uint32_t *seed)
{
    if (o->skip && strcmp(o->skip, name) == 0)
        return;
    if (o->bad_shape && strcmp(o->bad_shape, name) == 0)
        rows += 1;
    int64_t dims[2] = {rows, cols};
    gb_tensor *t = gb_tensor_add(b, name, type, n_dims, n_dims == 1 ? &dims[1] : dims, NULL, 0);
    gb_fill(t, rows, cols, seed);
}

static inline void tiny_llama(gguf_builder *b, const tiny_opts *o)
{
    const char *arch = o->arch ? o->arch : "llama";
    char key[96];
#define ARCH_KEY(s) (snprintf(key, sizeof key, "%s." s, arch), key)
    gb_kv_str(b, "general.architecture", arch);
    gb_kv_str(b, "general.name", "tiny test llama");
    gb_kv_u32(b, ARCH_KEY("block_count"), (uint32_t)o->n_layer);
    gb_kv_u32(b, ARCH_KEY("context_length"), (uint32_t)o->n_ctx);
    gb_kv_u32(b, ARCH_KEY("embedding_length"), (uint32_t)o->d);
    gb_kv_u32(b, ARCH_KEY("feed_forward_length"), (uint32_t)o->n_ff);
    gb_kv_u32(b, ARCH_KEY("attention.head_count"), (uint32_t)o->n_head);
    if (!o->no_head_count_kv)
        gb_kv_u32(b, ARCH_KEY("attention.head_count_kv"), (uint32_t)o->n_head_kv);
    gb_kv_f32(b, ARCH_KEY("rope.freq_base"), o->theta);
    gb_kv_f32(b, ARCH_KEY("attention.layer_norm_rms_epsilon"), o->eps);
    gb_kv_u32(b, ARCH_KEY("vocab_size"), (uint32_t)o->n_vocab);
    gb_kv_u32(b, ARCH_KEY("rope.dimension_count"), (uint32_t)(o->d / o->n_head));
    if (o->rope_linear > 0) {
        gb_kv_str(b, ARCH_KEY("rope.scaling.type"), "linear");
        gb_kv_f32(b, ARCH_KEY("rope.scaling.factor"), o->rope_linear);
    }
#undef ARCH_KEY
    tiny_tokenizer(b, o->n_vocab);

    uint32_t seed = 12345;
    int64_t d = o->d, hd = o->d / o->n_head, q = o->n_head * hd, kv = o->n_head_kv * hd;
    tiny_tensor(b, o, "token_embd.weight", o->type_embd, o->n_vocab, d, 2, &seed);
    for (int l = 0; l < o->n_layer; l++) {
        char nm[64];
#define T(suffix, type, r, c, nd)                                              \
    (snprintf(nm, sizeof nm, "blk.%d." suffix, l), tiny_tensor(b, o, nm, type, r, c, nd, &seed))
        T("attn_norm.weight", 0, 1, d, 1);
        T("attn_q.weight", o->type_q, q, d, 2);
        T("attn_k.weight", o->type_k, kv, d, 2);
        T("attn_v.weight", o->type_v, kv, d, 2);
        T("attn_output.weight", o->type_o, d, q, 2);
        T("ffn_norm.weight", 0, 1, d, 1);
        T("ffn_gate.weight", o->type_gate, o->n_ff, d, 2);
        T("ffn_up.weight", o->type_up, o->n_ff, d, 2);
        T("ffn_down.weight", o->type_down, d, o->n_ff, 2);
#undef T
    }
    tiny_tensor(b, o, "output_norm.weight", 0, 1, d, 1, &seed);
    if (o->untied)
        tiny_tensor(b, o, "output.weight", 0, o->n_vocab, d, 2, &seed);
}

static inline const gb_tensor *gb_find(const gguf_builder *b, const char *name)
{
    for (int i = 0; i < b->n_t; i++)
        if (strcmp(b->t[i].name, name) == 0)
            return &b->t[i];
    return NULL;
}

#endif
