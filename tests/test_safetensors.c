/* safetensors reader, config.json parser, HF name mapping, and the full
 * loader on a tiny Llama (2 layers, d=8, 2 heads of 4, 1 KV head, ff 16,
 * vocab 32) written into a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"
#include "libmop/mop.h"
#include "model.h"
#include "safetensors.h"

/* ---- in-memory images for the parser ------------------------------------- */

/* 8-byte length, header text, then data_bytes bytes 0, 1, 2, ... */
static uint8_t *make_image(const char *json, size_t data_bytes, size_t *size)
{
    size_t n = strlen(json);
    *size = 8 + n + data_bytes;
    uint8_t *b = malloc(*size);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, json, n);
    for (size_t i = 0; i < data_bytes; i++)
        b[8 + n + i] = (uint8_t)i;
    return b;
}

/* Parse json + data and return the status; the st_file is freed. */
static mop_status parse_json(const char *json, size_t data_bytes)
{
    size_t size;
    uint8_t *b = make_image(json, data_bytes, &size);
    st_file *f = NULL;
    long live = mop_alloc_live();
    mop_status st = safetensors_parse(b, size, "t", &f);
    if (st == MOP_OK)
        safetensors_free(f);
    else
        assert_null(f);
    assert_int_equal(mop_alloc_live(), live); /* nothing leaked on any path */
    free(b);
    return st;
}

static void test_parse_valid(void **state)
{
    (void)state;
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"b\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[8,20]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"c\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[20,28]},"
                       "\"e\":{\"dtype\":\"BF16\",\"shape\":[0,5],\"data_offsets\":[28,28]}}  ";
    size_t size;
    uint8_t *b = make_image(json, 28, &size);
    st_file *f = NULL;
    assert_int_equal(safetensors_parse(b, size, "t", &f), MOP_OK);
    assert_int_equal(f->n_tensors, 4);
    assert_int_equal(f->header_len, strlen(json));
    assert_int_equal(f->data_size, 28);
    const uint8_t *data = b + 8 + strlen(json);
    /* sorted by name */
    assert_string_equal(f->tensors[0].name, "a");
    assert_string_equal(f->tensors[3].name, "e");
    const st_tensor *t = safetensors_find(f, "b");
    assert_non_null(t);
    assert_int_equal(t->ftype, MOP_FT_F16);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->dims[0], 2);
    assert_int_equal(t->dims[1], 3);
    assert_ptr_equal(t->data, data + 8);
    t = safetensors_find(f, "a");
    assert_int_equal(t->ftype, MOP_FT_F32);
    assert_ptr_equal(t->data, data);
    t = safetensors_find(f, "c");
    assert_int_equal(t->ftype, -1); /* parsed, but libmop cannot convert I64 */
    assert_string_equal(t->dtype, "I64");
    assert_int_equal(t->n_dims, 0);
    t = safetensors_find(f, "e");
    assert_int_equal(t->ftype, MOP_FT_BF16);
    assert_int_equal(t->end - t->begin, 0);
    assert_null(safetensors_find(f, "zz"));
    safetensors_free(f);
    free(b);
}

static void test_parse_every_prefix_fails(void **state)
{
    (void)state;
    const char *json = "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                       "\"v\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[12,16]}}";
    size_t size;
    uint8_t *b = make_image(json, 16, &size);
    long live = mop_alloc_live();
    for (size_t n = 0; n < size; n++) {
        /* A private copy of exactly n bytes so ASan catches any over-read. */
        uint8_t *prefix = malloc(n ? n : 1);
        memcpy(prefix, b, n);
        st_file *f = NULL;
        mop_status st = safetensors_parse(prefix, n, "t", &f);
        if (st != MOP_E_FORMAT)
            fail_msg("prefix of %zu bytes: %s (%s)", n, mop_status_name(st), mop_last_error());
        assert_null(f);
        free(prefix);
    }
    assert_int_equal(mop_alloc_live(), live);
    st_file *f = NULL;
    assert_int_equal(safetensors_parse(b, size, "t", &f), MOP_OK);
    safetensors_free(f);
    free(b);
}

static void test_parse_header_length(void **state)
{
    (void)state;
    size_t size;
    uint8_t *b = make_image("{}", 0, &size);
    st_file *f = NULL;
    assert_int_equal(safetensors_parse(b, size, "t", &f), MOP_OK); /* empty model is valid */
    safetensors_free(f);
    b[0] = 3; /* length 3 > 2 bytes present */
    assert_int_equal(safetensors_parse(b, size, "t", &f), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "header length 3 beyond the file's 10 bytes"));
    b[0] = 2;
    b[7] = 0x80; /* 2^63 + 2: must not wrap around */
    assert_int_equal(safetensors_parse(b, size, "t", &f), MOP_E_FORMAT);
    free(b);
    /* Above the 100 MB cap although the "file" claims to be that long. */
    uint8_t hdr[16] = {0};
    uint64_t n = ST_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++)
        hdr[i] = (uint8_t)(n >> (8 * i));
    hdr[8] = '{';
    assert_int_equal(safetensors_parse(hdr, (size_t)n + 8, "t", &f), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "limit"));
    assert_int_equal(safetensors_parse(NULL, 0, "t", &f), MOP_E_FORMAT);
    assert_int_equal(safetensors_parse(hdr, 8, "t", NULL), MOP_E_INVALID_ARG);
}

static void test_parse_errors(void **state)
{
    (void)state;
    /* JSON that is not JSON, or not the right JSON */
    assert_int_equal(parse_json("{\"a\":", 0), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "not valid JSON"));
    assert_int_equal(parse_json("[1,2]", 0), MOP_E_FORMAT);
    assert_int_equal(parse_json("{} x", 0), MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"a\":3}", 0), MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"__metadata__\":{\"k\":1}}", 0), MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"__metadata__\":[]}", 0), MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                     MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4),
                     MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4),
                     MOP_E_FORMAT);
    /* dtype */
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F99\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                     MOP_E_UNSUPPORTED);
    assert_non_null(strstr(mop_last_error(), "tensor w: unknown dtype \"F99\""));
    /* shape entries */
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4),
                     MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "tensor w: shape entry 0"));
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,6]}}", 6),
                     MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4),
                     MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                                "\"data_offsets\":[0,4]}}", 4),
                     MOP_E_UNSUPPORTED);
    /* element count overflow: 2^40 * 2^40 */
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
                                "\"data_offsets\":[0,4]}}", 4),
                     MOP_E_SHAPE);
    /* bytes overflow: 2^62 elements * 4 */
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[4194304,1099511627776],"
                                "\"data_offsets\":[0,0]}}", 0),
                     MOP_E_SHAPE);
    /* shape vs offsets */
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16),
                     MOP_E_SHAPE);
    assert_non_null(strstr(mop_last_error(), "tensor w: shape [2, 2] of F32 needs 16 bytes"));
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,4]}}", 8),
                     MOP_E_SHAPE);
    /* offsets */
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4),
                     MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "run backwards"));
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7),
                     MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "tensor w: data_offsets [0, 8) beyond the data buffer of 7"));
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4),
                     MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1e300,1e300]}}", 4),
                     MOP_E_FORMAT);
    /* overlaps and duplicates */
    assert_int_equal(parse_json("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
                     MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "tensors x [0, 8) and y [4, 12) overlap"));
    assert_int_equal(parse_json("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                                "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 12),
                     MOP_E_FORMAT);
    assert_int_equal(parse_json("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
                     MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "tensor x appears twice"));
    /* adjacent and empty tensors do not overlap */
    assert_int_equal(parse_json("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[2,2]},"
                                "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
                     MOP_OK);
}

/* ---- config.json --------------------------------------------------------- */

#define TINY_CONFIG_FMT \
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\"," \
    " \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 2," \
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"vocab_size\": 32," \
    " \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-05, \"rope_theta\": 50000.0," \
    " \"hidden_act\": \"silu\", \"tie_word_embeddings\": %s, \"rope_scaling\": %s%s}"

static mop_status parse_config(const char *json, mop_hparams *hp)
{
    char name[64];
    return safetensors_parse_config(json, strlen(json), "cfg", hp, name, sizeof name);
}

static void test_config(void **state)
{
    (void)state;
    char buf[1024];
    mop_hparams hp;
    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "false", "null", "");
    assert_int_equal(parse_config(buf, &hp), MOP_OK);
    assert_int_equal(hp.n_layer, 2);
    assert_int_equal(hp.n_embd, 8);
    assert_int_equal(hp.n_ff, 16);
    assert_int_equal(hp.n_head, 2);
    assert_int_equal(hp.n_head_kv, 1);
    assert_int_equal(hp.head_dim, 4);
    assert_int_equal(hp.n_rot, 4);
    assert_int_equal(hp.n_vocab, 32);
    assert_int_equal(hp.n_ctx_train, 64);
    assert_float_equal(hp.norm_eps, 1e-5f, 0);
    assert_float_equal(hp.rope_theta, 50000.0f, 0);
    assert_int_equal(hp.tied_embeddings, 0);
    assert_int_equal(hp.rope_scaling, MOP_ROPE_SCALING_NONE);

    /* defaults: kv heads = heads, head_dim = d/heads, theta 1e4, eps 1e-6, untied */
    const char *minimal = "{\"architectures\": [\"X\", \"LlamaForCausalLM\"], \"hidden_size\": 12,"
                          " \"intermediate_size\": 5, \"num_hidden_layers\": 1,"
                          " \"num_attention_heads\": 3, \"vocab_size\": 7, \"head_dim\": null}";
    assert_int_equal(parse_config(minimal, &hp), MOP_OK);
    assert_int_equal(hp.n_head_kv, 3);
    assert_int_equal(hp.head_dim, 4);
    assert_float_equal(hp.rope_theta, 10000.0f, 0);
    assert_float_equal(hp.norm_eps, 1e-6f, 0);
    assert_int_equal(hp.n_ctx_train, 2048);
    assert_int_equal(hp.tied_embeddings, 0);

    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "true",
             "{\"type\": \"linear\", \"factor\": 4.0}", ", \"head_dim\": 6");
    assert_int_equal(parse_config(buf, &hp), MOP_OK);
    assert_int_equal(hp.tied_embeddings, 1);
    assert_int_equal(hp.head_dim, 6);
    assert_int_equal(hp.rope_scaling, MOP_ROPE_SCALING_LINEAR);
    assert_float_equal(hp.rope_factor, 4.0f, 0);

    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "true",
             "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
             " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}", "");
    assert_int_equal(parse_config(buf, &hp), MOP_OK);
    assert_int_equal(hp.rope_scaling, MOP_ROPE_SCALING_LLAMA3);
    assert_float_equal(hp.rope_factor, 8.0f, 0);
    assert_float_equal(hp.rope_low_freq_factor, 1.0f, 0);
    assert_float_equal(hp.rope_high_freq_factor, 4.0f, 0);
    assert_int_equal(hp.rope_orig_ctx, 8192);

    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "true", "{\"rope_type\": \"llama3\", \"factor\": 8.0}", "");
    assert_int_equal(parse_config(buf, &hp), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "low_freq_factor"));
    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "true", "{\"rope_type\": \"yarn\", \"factor\": 8.0}", "");
    assert_int_equal(parse_config(buf, &hp), MOP_E_UNSUPPORTED);
    assert_non_null(strstr(mop_last_error(), "\"yarn\""));
    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "1", "null", "");
    assert_int_equal(parse_config(buf, &hp), MOP_E_FORMAT);
    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "false", "null", ", \"attention_bias\": true");
    assert_int_equal(parse_config(buf, &hp), MOP_E_UNSUPPORTED);

    assert_int_equal(parse_config("{\"model_type\": \"mistral\", \"architectures\": "
                                  "[\"MistralForCausalLM\"]}", &hp),
                     MOP_E_UNSUPPORTED);
    assert_non_null(strstr(mop_last_error(), "\"mistral\""));
    assert_non_null(strstr(mop_last_error(), "MistralForCausalLM"));
    assert_int_equal(parse_config("{\"model_type\": \"llama\", \"hidden_size\": 8}", &hp),
                     MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "missing \"num_hidden_layers\""));
    assert_int_equal(parse_config("{\"model_type\": \"llama\", \"num_hidden_layers\": -2}", &hp),
                     MOP_E_FORMAT);
    assert_int_equal(parse_config("{\"model_type\": \"llama\", \"num_hidden_layers\": 2.5}", &hp),
                     MOP_E_FORMAT);
    assert_int_equal(parse_config("{\"model_type\": \"llama\"", &hp), MOP_E_FORMAT);
    /* numbers that a float cannot hold (1e-85 rounds to 0, 1e300 to inf) */
    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "true", "null", "");
    memcpy(strstr(buf, "1e-05"), "1e-85", 5);
    assert_int_equal(parse_config(buf, &hp), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "rms_norm_eps"));
    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, "true", "null", "");
    memcpy(strstr(buf, "50000.0"), "1e300  ", 7);
    assert_int_equal(parse_config(buf, &hp), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "rope_theta"));
    assert_int_equal(parse_config("[]", &hp), MOP_E_FORMAT);
    /* hidden not divisible by heads, kv heads not dividing heads */
    assert_int_equal(parse_config("{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                                  "\"hidden_size\": 10, \"intermediate_size\": 4, "
                                  "\"num_attention_heads\": 3, \"vocab_size\": 5}", &hp),
                     MOP_E_SHAPE);
    assert_int_equal(parse_config("{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                                  "\"hidden_size\": 12, \"intermediate_size\": 4, "
                                  "\"num_attention_heads\": 3, \"num_key_value_heads\": 2, "
                                  "\"vocab_size\": 5}", &hp),
                     MOP_E_SHAPE);
}

static void test_map_name(void **state)
{
    (void)state;
    char b[64];
    assert_int_equal(safetensors_map_name("model.embed_tokens.weight", 2, b, sizeof b), 1);
    assert_string_equal(b, "token_embd.weight");
    assert_int_equal(safetensors_map_name("model.norm.weight", 2, b, sizeof b), 1);
    assert_string_equal(b, "output_norm.weight");
    assert_int_equal(safetensors_map_name("lm_head.weight", 2, b, sizeof b), 1);
    assert_string_equal(b, "output.weight");
    assert_int_equal(safetensors_map_name("model.layers.1.self_attn.o_proj.weight", 2, b, sizeof b), 1);
    assert_string_equal(b, "blk.1.attn_output.weight");
    assert_int_equal(safetensors_map_name("model.layers.0.post_attention_layernorm.weight", 2, b, sizeof b), 1);
    assert_string_equal(b, "blk.0.ffn_norm.weight");
    assert_int_equal(safetensors_map_name("model.layers.0.mlp.down_proj.weight", 2, b, sizeof b), 1);
    assert_string_equal(b, "blk.0.ffn_down.weight");
    assert_int_equal(safetensors_map_name("model.layers.2.mlp.up_proj.weight", 2, b, sizeof b), -1);
    assert_int_equal(safetensors_map_name("model.layers.0.self_attn.rotary_emb.inv_freq", 2, b, sizeof b), 0);
    assert_int_equal(safetensors_map_name("model.layers.01.mlp.up_proj.weight", 2, b, sizeof b), 0);
    assert_int_equal(safetensors_map_name("model.layers.-1.mlp.up_proj.weight", 2, b, sizeof b), 0);
    assert_int_equal(safetensors_map_name("model.layers.99999999999.mlp.up_proj.weight", 2, b, sizeof b), 0);
    assert_int_equal(safetensors_map_name("model.layers.1", 2, b, sizeof b), 0);
    assert_int_equal(safetensors_map_name("model.layers.0.mlp.up_proj.bias", 2, b, sizeof b), 0);
}

/* ---- the tiny model on disk ---------------------------------------------- */

enum { L = 2, D = 8, NH = 2, NKV = 1, HD = 4, FF = 16, V = 32 };

typedef struct tspec {
    char name[96];
    const char *dtype;
    int n_dims;
    int64_t dims[2];
    int id;        /* value seed */
    int64_t shift; /* extra bytes added to data_offsets (corruptions) */
} tspec;

typedef struct tlist {
    tspec t[40];
    int n;
} tlist;

/* Exactly representable in F16 and BF16: k/64 with |k| <= 48. */
static float value(int id, int64_t i)
{
    return (float)((id * 131 + i * 17) % 97 - 48) / 64.0f;
}

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* F16 of a float that is exact in F16 (normal numbers or zero). */
static uint16_t f16_bits(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffff) == 0)
        return (uint16_t)(u >> 16);
    uint32_t sign = (u >> 16) & 0x8000, exp = ((u >> 23) & 0xff) - 127 + 15;
    return (uint16_t)(sign | (exp << 10) | ((u >> 13) & 0x3ff));
}

static void add(tlist *tl, const char *name, const char *dtype, int n_dims, int64_t d0, int64_t d1)
{
    tspec *t = &tl->t[tl->n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->n_dims = n_dims;
    t->dims[0] = d0;
    t->dims[1] = d1;
    t->id = tl->n + 1;
    t->shift = 0;
    tl->n++;
}

/* Embeddings BF16, input norms F16, everything else F32; plus one buffer
 * that the loader must ignore. */
static void tiny_model(tlist *tl, int with_lm_head)
{
    tl->n = 0;
    add(tl, "model.embed_tokens.weight", "BF16", 2, V, D);
    add(tl, "model.norm.weight", "F32", 1, D, 0);
    if (with_lm_head)
        add(tl, "lm_head.weight", "F32", 2, V, D);
    char n[96];
    for (int l = 0; l < L; l++) {
#define LAYER(suffix, dt, nd, a, b)                                                    \
        snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix);                        \
        add(tl, n, dt, nd, a, b);
        LAYER("input_layernorm.weight", "F16", 1, D, 0)
        LAYER("post_attention_layernorm.weight", "F32", 1, D, 0)
        LAYER("self_attn.q_proj.weight", "F32", 2, NH * HD, D)
        LAYER("self_attn.k_proj.weight", "F32", 2, NKV * HD, D)
        LAYER("self_attn.v_proj.weight", "F32", 2, NKV * HD, D)
        LAYER("self_attn.o_proj.weight", "F32", 2, D, NH * HD)
        LAYER("mlp.gate_proj.weight", "F32", 2, FF, D)
        LAYER("mlp.up_proj.weight", "F32", 2, FF, D)
        LAYER("mlp.down_proj.weight", "F32", 2, D, FF)
        LAYER("self_attn.rotary_emb.inv_freq", "F32", 1, HD / 2, 0)
#undef LAYER
    }
}

static int64_t elems(const tspec *t)
{
    return t->n_dims == 1 ? t->dims[0] : t->dims[0] * t->dims[1];
}

static int esize(const char *dtype)
{
    return strcmp(dtype, "F32") == 0 || strcmp(dtype, "I32") == 0 ? 4 : 2;
}

/* Write tensors [lo, hi) of tl as one safetensors file. */
static void write_st(const char *path, const tlist *tl, int lo, int hi)
{
    char *hdr = malloc(16384);
    size_t k = (size_t)sprintf(hdr, "{\"__metadata__\": {\"format\": \"pt\"}");
    uint64_t off = 0;
    for (int i = lo; i < hi; i++) {
        const tspec *t = &tl->t[i];
        uint64_t nb = (uint64_t)elems(t) * (uint64_t)esize(t->dtype);
        k += (size_t)sprintf(hdr + k, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [%lld", t->name,
                             t->dtype, (long long)t->dims[0]);
        if (t->n_dims == 2)
            k += (size_t)sprintf(hdr + k, ", %lld", (long long)t->dims[1]);
        k += (size_t)sprintf(hdr + k, "], \"data_offsets\": [%llu, %llu]}",
                             (unsigned long long)off,
                             (unsigned long long)(off + nb + (uint64_t)t->shift));
        off += nb;
    }
    k += (size_t)sprintf(hdr + k, "}");
    while (k % 8)
        hdr[k++] = ' '; /* align the data buffer, as writers do */
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)((uint64_t)k >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(hdr, 1, k, f);
    for (int i = lo; i < hi; i++) {
        const tspec *t = &tl->t[i];
        for (int64_t j = 0; j < elems(t); j++) {
            float v = value(t->id, j);
            if (strcmp(t->dtype, "F32") == 0) {
                fwrite(&v, 4, 1, f);
            } else if (strcmp(t->dtype, "I32") == 0) {
                int32_t x = (int32_t)j;
                fwrite(&x, 4, 1, f);
            } else {
                uint16_t h = strcmp(t->dtype, "F16") == 0 ? f16_bits(v)
                                                           : (uint16_t)(f32_bits(v) >> 16);
                fwrite(&h, 2, 1, f);
            }
        }
    }
    fclose(f);
    free(hdr);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

typedef struct fixture {
    char dir[64];
    char path[160];
} fixture;

static const char *fx_path(fixture *fx, const char *name)
{
    snprintf(fx->path, sizeof fx->path, "%s/%s", fx->dir, name);
    return fx->path;
}

static void write_config(fixture *fx, const char *tied, const char *extra)
{
    char buf[1024];
    snprintf(buf, sizeof buf, TINY_CONFIG_FMT, tied, "null", extra);
    write_text(fx_path(fx, "config.json"), buf);
}

static int setup_dir(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/mop_st_XXXXXX");
    if (!mkdtemp(fx->dir))
        return -1;
    *state = fx;
    return 0;
}

static int teardown_dir(void **state)
{
    fixture *fx = *state;
    const char *names[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                           "a.safetensors", "b.safetensors", "tokenizer.json"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unlink(fx_path(fx, names[i]));
    rmdir(fx->dir);
    free(fx);
    return 0;
}

static mop_status load(const char *path, mop_model **m)
{
    *m = NULL;
    long live = mop_alloc_live();
    mop_status st = mop_model_load(path, NULL, m);
    if (st != MOP_OK) {
        assert_null(*m);
        assert_int_equal(mop_alloc_live(), live); /* nothing leaked on the error path */
    }
    return st;
}

/* Weight values as loaded, against the values written (exact: all inputs are
 * exactly representable), with Q/K rows moved to libmop's interleaved RoPE
 * layout: libmop row h*HD + 2i + t holds HF row h*HD + t*HD/2 + i. */
static void check_weights(const mop_model *m, const tlist *tl, int tied)
{
    const mop_hparams *hp = &m->hp;
    assert_int_equal(hp->n_layer, L);
    for (int i = 0; i < tl->n; i++) {
        const tspec *t = &tl->t[i];
        const float *got = NULL;
        int qk_heads = 0;
        int l = -1;
        char suffix[64] = "";
        if (strcmp(t->name, "model.embed_tokens.weight") == 0)
            got = m->tok_embd;
        else if (strcmp(t->name, "model.norm.weight") == 0)
            got = m->out_norm;
        else if (strcmp(t->name, "lm_head.weight") == 0)
            got = tied ? NULL : m->lm_head.data;
        else if (sscanf(t->name, "model.layers.%d.%63s", &l, suffix) == 2) {
            const mop_layer *ly = &m->layers[l];
            if (strcmp(suffix, "input_layernorm.weight") == 0) got = ly->attn_norm;
            if (strcmp(suffix, "post_attention_layernorm.weight") == 0) got = ly->ffn_norm;
            if (strcmp(suffix, "self_attn.q_proj.weight") == 0) got = ly->wq.data, qk_heads = NH;
            if (strcmp(suffix, "self_attn.k_proj.weight") == 0) got = ly->wk.data, qk_heads = NKV;
            if (strcmp(suffix, "self_attn.v_proj.weight") == 0) got = ly->wv.data;
            if (strcmp(suffix, "self_attn.o_proj.weight") == 0) got = ly->wo.data;
            if (strcmp(suffix, "mlp.gate_proj.weight") == 0) got = ly->w_gate.data;
            if (strcmp(suffix, "mlp.up_proj.weight") == 0) got = ly->w_up.data;
            if (strcmp(suffix, "mlp.down_proj.weight") == 0) got = ly->w_down.data;
        }
        if (!got)
            continue;
        int64_t cols = t->n_dims == 2 ? t->dims[1] : 1;
        for (int64_t r = 0; r < t->dims[0]; r++) {
            int64_t hf_r = r;
            if (qk_heads) {
                int64_t h = r / HD, j = r % HD, ii = j / 2, tt = j % 2;
                hf_r = h * HD + tt * (HD / 2) + ii;
            }
            for (int64_t c = 0; c < cols; c++)
                if (got[r * cols + c] != value(t->id, hf_r * cols + c))
                    fail_msg("%s[%lld, %lld]: %g, expected %g", t->name, (long long)r,
                             (long long)c, (double)got[r * cols + c],
                             (double)value(t->id, hf_r * cols + c));
        }
    }
    if (tied)
        assert_ptr_equal(m->lm_head.data, m->tok_embd);
}

static void test_load_dir_and_file(void **state)
{
    fixture *fx = *state;
    tlist tl;
    tiny_model(&tl, 0);
    write_st(fx_path(fx, "model.safetensors"), &tl, 0, tl.n);
    write_config(fx, "true", "");
    mop_model *m;
    for (int pass = 0; pass < 2; pass++) {
        const char *path = pass == 0 ? fx->dir : fx_path(fx, "model.safetensors");
        if (load(path, &m) != MOP_OK)
            fail_msg("%s: %s", path, mop_last_error());
        mop_model_info info = {.struct_size = sizeof info};
        assert_int_equal(mop_model_get_info(m, &info), MOP_OK);
        assert_string_equal(info.arch, "llama");
        assert_string_equal(info.file_type, "safetensors");
        assert_int_equal(info.n_layer, L);
        assert_int_equal(info.n_embd, D);
        assert_int_equal(info.n_ff, FF);
        assert_int_equal(info.n_head, NH);
        assert_int_equal(info.n_head_kv, NKV);
        assert_int_equal(info.head_dim, HD);
        assert_int_equal(info.n_vocab, V);
        assert_int_equal(info.n_ctx_train, 64);
        assert_float_equal(info.rope_theta, 50000.0f, 0);
        assert_float_equal(info.norm_eps, 1e-5f, 0);
        assert_int_equal(info.tied_embeddings, 1);
        /* embeddings + final norm + per layer (2 norms, q, k, v, o, gate, up, down) */
        uint64_t per_layer = 2 * D + NH * HD * D * 2 + 2 * NKV * HD * D + 3 * FF * D;
        assert_int_equal(info.n_params, (uint64_t)V * D + D + L * per_layer);
        struct stat s;
        assert_int_equal(stat(fx_path(fx, "model.safetensors"), &s), 0);
        assert_int_equal(info.file_bytes, (uint64_t)s.st_size);
        /* the 19 weights of the model, not the ignored inv_freq buffers */
        assert_int_equal(mop_model_tensor_count(m), 2 + 9 * L);
        check_weights(m, &tl, 1);
        /* no tokenizer.json: tokenizing is unavailable, not a crash */
        int32_t tok[4];
        size_t n_tok;
        assert_int_equal(mop_tokenize(m, "hi", 2, 0, tok, 4, &n_tok), MOP_E_UNSUPPORTED);
        mop_model_free(m);
    }
}

static void test_load_untied_and_tied_lm_head(void **state)
{
    fixture *fx = *state;
    tlist tl;
    tiny_model(&tl, 1);
    write_st(fx_path(fx, "model.safetensors"), &tl, 0, tl.n);
    write_config(fx, "false", "");
    mop_model *m;
    if (load(fx->dir, &m) != MOP_OK)
        fail_msg("%s", mop_last_error());
    assert_int_equal(m->hp.tied_embeddings, 0);
    assert_ptr_not_equal(m->lm_head.data, m->tok_embd);
    check_weights(m, &tl, 0);
    mop_model_free(m);
    /* tie_word_embeddings true: lm_head.weight in the file is ignored */
    write_config(fx, "true", "");
    assert_int_equal(load(fx->dir, &m), MOP_OK);
    assert_int_equal(m->hp.tied_embeddings, 1);
    check_weights(m, &tl, 1);
    mop_model_free(m);
    /* untied without lm_head.weight: missing tensor */
    tiny_model(&tl, 0);
    write_st(fx_path(fx, "model.safetensors"), &tl, 0, tl.n);
    write_config(fx, "false", "");
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "lm_head.weight is missing"));
}

static void test_load_sharded(void **state)
{
    fixture *fx = *state;
    tlist tl;
    tiny_model(&tl, 0);
    int half = tl.n / 2;
    write_st(fx_path(fx, "a.safetensors"), &tl, 0, half);
    write_st(fx_path(fx, "b.safetensors"), &tl, half, tl.n);
    write_config(fx, "true", "");
    char idx[8192];
    size_t k = (size_t)sprintf(idx, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    for (int i = 0; i < tl.n; i++)
        k += (size_t)sprintf(idx + k, "%s\"%s\": \"%s\"", i ? ", " : "", tl.t[i].name,
                             i < half ? "a.safetensors" : "b.safetensors");
    sprintf(idx + k, "}}");
    write_text(fx_path(fx, "model.safetensors.index.json"), idx);
    mop_model *m;
    if (load(fx->dir, &m) != MOP_OK)
        fail_msg("%s", mop_last_error());
    check_weights(m, &tl, 1);
    mop_model_info info = {.struct_size = sizeof info};
    assert_int_equal(mop_model_get_info(m, &info), MOP_OK);
    struct stat sa, sb;
    stat(fx_path(fx, "a.safetensors"), &sa);
    stat(fx_path(fx, "b.safetensors"), &sb);
    assert_int_equal(info.file_bytes, (uint64_t)(sa.st_size + sb.st_size));
    mop_model_free(m);


    /* index naming a tensor the shard does not hold */
    char *p = strstr(idx, "\"model.norm.weight\": \"a.safetensors\"");
    assert_non_null(p);
    memcpy(strstr(p, "a.safetensors"), "b", 1);
    write_text(fx_path(fx, "model.safetensors.index.json"), idx);
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "model.norm.weight"));

    /* shard missing on disk */
    memcpy(strstr(p, "b.safetensors"), "c", 1);
    write_text(fx_path(fx, "model.safetensors.index.json"), idx);
    assert_int_equal(load(fx->dir, &m), MOP_E_IO);
    assert_non_null(strstr(mop_last_error(), "c.safetensors"));

    /* a path out of the directory */
    memcpy(strstr(p, "c.safetensors"), "/", 1);
    write_text(fx_path(fx, "model.safetensors.index.json"), idx);
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);

    write_text(fx_path(fx, "model.safetensors.index.json"), "{\"weight_map\": 3}");
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    write_text(fx_path(fx, "model.safetensors.index.json"), "{\"weight_map\": {");
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
}

static void test_load_any_safetensors_in_dir(void **state)
{
    fixture *fx = *state;
    tlist tl;
    tiny_model(&tl, 0);
    write_st(fx_path(fx, "a.safetensors"), &tl, 0, 5);
    write_st(fx_path(fx, "b.safetensors"), &tl, 5, tl.n);
    write_config(fx, "true", "");
    mop_model *m;
    if (load(fx->dir, &m) != MOP_OK)
        fail_msg("%s", mop_last_error());
    check_weights(m, &tl, 1);
    mop_model_free(m);
    /* the same tensor in two files */
    write_st(fx_path(fx, "a.safetensors"), &tl, 0, 6);
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "stored a second time"));
}

static void test_load_truncated_every_prefix(void **state)
{
    fixture *fx = *state;
    tlist tl;
    tiny_model(&tl, 0);
    write_config(fx, "true", "");
    const char *path = fx_path(fx, "model.safetensors");
    write_st(path, &tl, 0, tl.n);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    uint8_t *bytes = malloc((size_t)size);
    assert_int_equal(fread(bytes, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    char file[160];
    snprintf(file, sizeof file, "%s", path);
    /* Every prefix through the header, then a stride through the data. */
    long header_end = 8 + (long)(bytes[0] | bytes[1] << 8);
    for (long n = 0; n < size; n += n < header_end + 16 ? 1 : 37) {
        f = fopen(file, "wb");
        fwrite(bytes, 1, (size_t)n, f);
        fclose(f);
        mop_model *m;
        mop_status st = load(fx->dir, &m);
        if (st != MOP_E_FORMAT)
            fail_msg("prefix of %ld/%ld bytes: %s (%s)", n, size, mop_status_name(st),
                     mop_last_error());
    }
    free(bytes);
}

static void test_load_bad_tensors(void **state)
{
    fixture *fx = *state;
    tlist tl;
    write_config(fx, "true", "");
    const char *path = fx_path(fx, "model.safetensors");
    mop_model *m;

    /* a used tensor in a dtype libmop cannot convert */
    tiny_model(&tl, 0);
    tl.t[3].dtype = "I32";
    write_st(path, &tl, 0, tl.n);
    assert_int_equal(load(fx->dir, &m), MOP_E_UNSUPPORTED);
    assert_non_null(strstr(mop_last_error(), tl.t[3].name));
    assert_non_null(strstr(mop_last_error(), "I32"));
    /* ... while an ignored tensor may have any dtype */
    tiny_model(&tl, 0);
    tl.t[tl.n - 1].dtype = "I32";
    write_st(path, &tl, 0, tl.n);
    assert_int_equal(load(fx->dir, &m), MOP_OK);
    mop_model_free(m);

    /* shape vs data_offsets */
    tiny_model(&tl, 0);
    tl.t[4].shift = 4; /* offsets span 4 bytes more than the shape needs */
    write_st(path, &tl, 0, tl.n);
    assert_int_equal(load(fx->dir, &m), MOP_E_SHAPE);
    assert_non_null(strstr(mop_last_error(), tl.t[4].name));

    /* missing tensor */
    tiny_model(&tl, 0);
    tl.t[5] = tl.t[tl.n - 1]; /* replace a layer-0 tensor by an ignored one */
    snprintf(tl.t[5].name, sizeof tl.t[5].name, "model.layers.0.something_else");
    write_st(path, &tl, 0, tl.n);
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "blk.0.attn_k.weight is missing"));

    /* a layer index past num_hidden_layers */
    tiny_model(&tl, 0);
    snprintf(tl.t[tl.n].name, sizeof tl.t[0].name, "model.layers.7.mlp.up_proj.weight");
    tl.t[tl.n].dtype = "F32";
    tl.t[tl.n].n_dims = 2;
    tl.t[tl.n].dims[0] = FF;
    tl.t[tl.n].dims[1] = D;
    tl.t[tl.n].id = 99;
    tl.t[tl.n].shift = 0;
    tl.n++;
    write_st(path, &tl, 0, tl.n);
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "model.layers.7.mlp.up_proj.weight"));

    /* wrong shape for the hyper-parameters */
    tiny_model(&tl, 0);
    tl.t[4].dims[1] = D / 2;
    tl.t[4].dims[0] = 2 * NH * HD;
    write_st(path, &tl, 0, tl.n);
    assert_int_equal(load(fx->dir, &m), MOP_E_SHAPE);
}

static void test_load_overlap(void **state)
{
    fixture *fx = *state;
    write_config(fx, "true", "");
    /* Two tensors sharing bytes: hand-made header. */
    const char *json = "{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]},"
                       "\"model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[8],"
                       "\"data_offsets\":[16,48]}}";
    size_t size;
    uint8_t *b = make_image(json, 48, &size);
    FILE *f = fopen(fx_path(fx, "model.safetensors"), "wb");
    fwrite(b, 1, size, f);
    fclose(f);
    free(b);
    mop_model *m;
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "overlap"));
    /* header length beyond the file */
    uint8_t bad[16] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    f = fopen(fx_path(fx, "model.safetensors"), "wb");
    fwrite(bad, 1, 10, f);
    fclose(f);
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "header length 200 beyond"));
    /* invalid JSON */
    b = make_image("{\"model.norm.weight\": {\"dtype\": F32}}", 0, &size);
    f = fopen(fx_path(fx, "model.safetensors"), "wb");
    fwrite(b, 1, size, f);
    fclose(f);
    free(b);
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "not valid JSON"));
}

static void test_load_config_errors(void **state)
{
    fixture *fx = *state;
    tlist tl;
    tiny_model(&tl, 0);
    write_st(fx_path(fx, "model.safetensors"), &tl, 0, tl.n);
    mop_model *m;
    /* missing config.json */
    assert_int_equal(load(fx->dir, &m), MOP_E_IO);
    assert_non_null(strstr(mop_last_error(), "config.json"));
    assert_int_equal(load(fx_path(fx, "model.safetensors"), &m), MOP_E_IO);
    /* unsupported architecture */
    write_text(fx_path(fx, "config.json"),
               "{\"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"]}");
    assert_int_equal(load(fx->dir, &m), MOP_E_UNSUPPORTED);
    assert_non_null(strstr(mop_last_error(), "gpt2"));
    write_text(fx_path(fx, "config.json"), "{not json");
    assert_int_equal(load(fx->dir, &m), MOP_E_FORMAT);
    /* config disagreeing with the tensors */
    char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 12,"
             " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
             " \"vocab_size\": 32, \"tie_word_embeddings\": true}");
    write_text(fx_path(fx, "config.json"), buf);
    assert_int_equal(load(fx->dir, &m), MOP_E_SHAPE);
    /* nothing to load */
    unlink(fx_path(fx, "model.safetensors"));
    write_config(fx, "true", "");
    assert_int_equal(load(fx->dir, &m), MOP_E_IO);
    assert_int_equal(load(fx_path(fx, "nope.safetensors"), &m), MOP_E_IO);
}

static void test_load_bad_tokenizer_fails(void **state)
{
    fixture *fx = *state;
    tlist tl;
    tiny_model(&tl, 0);
    write_st(fx_path(fx, "model.safetensors"), &tl, 0, tl.n);
    write_config(fx, "true", "");
    write_text(fx_path(fx, "tokenizer.json"), "{\"model\": 1");
    mop_model *m;
    mop_status st = load(fx->dir, &m);
    assert_int_not_equal(st, MOP_OK);
    assert_non_null(strstr(mop_last_error(), "tokenizer.json"));
}

/* A tokenizer with more tokens than config.json's vocab_size is refused with
 * MOP_E_SHAPE, as the GGUF loader does (issue 14, F4: it loaded, and token
 * ids past the embeddings could reach the forward); one that fits loads. */
static void test_load_tokenizer_larger_than_vocab_fails(void **state)
{
    fixture *fx = *state;
    tlist tl;
    tiny_model(&tl, 0);
    write_st(fx_path(fx, "model.safetensors"), &tl, 0, tl.n);
    write_config(fx, "true", "");
    for (int n_tok = V; n_tok <= V + 1; n_tok++) {
        char json[4096];
        int k = snprintf(json, sizeof json,
                         "{\"normalizer\": null, \"added_tokens\": [],"
                         " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
                         " \"model\": {\"type\": \"BPE\", \"merges\": [], \"vocab\": {");
        for (int i = 0; i < n_tok; i++)
            k += snprintf(json + k, sizeof json - (size_t)k, "%s\"t%d\": %d", i ? ", " : "", i, i);
        snprintf(json + k, sizeof json - (size_t)k, "}}}");
        write_text(fx_path(fx, "tokenizer.json"), json);
        mop_model *m;
        mop_status st = load(fx->dir, &m);
        if (n_tok == V) {
            if (st != MOP_OK)
                fail_msg("%s", mop_last_error());
            mop_model_free(m);
        } else {
            assert_int_equal(st, MOP_E_SHAPE);
            assert_non_null(strstr(mop_last_error(), "the tokenizer has 33 tokens but the model only 32"));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_every_prefix_fails),
        cmocka_unit_test(test_parse_header_length),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_map_name),
        cmocka_unit_test_setup_teardown(test_load_dir_and_file, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_untied_and_tied_lm_head, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_sharded, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_any_safetensors_in_dir, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_truncated_every_prefix, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_bad_tensors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_overlap, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_config_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_bad_tokenizer_fails, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_load_tokenizer_larger_than_vocab_fails, setup_dir,
                                        teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
