/* A model from a GGUF file: map it, read the llama hyper-parameters from the
 * metadata, assemble the tensors (their names are already canonical) and
 * build the tokenizer. The parsed table is dropped after load: the model
 * keeps the mapping, its own tensor records and the tokenizer's copies. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fileio.h"
#include "gguf.h"
#include "loaders.h"
#include "tokenizer.h"
#include "weight_codec.h"

/* Architectures whose GGUF tensors and semantics are exactly llama's. */
static const char *const llama_like[] = {"llama"};

typedef struct arch_keys {
    const gguf_file *g;
    char arch[32];
} arch_keys;

static void key_of(const arch_keys *a, const char *suffix, char *key, size_t cap)
{
    snprintf(key, cap, "%s.%s", a->arch, suffix);
}

/* A positive int32 `<arch>.suffix`; *out = dflt when absent and !required. */
static mop_status get_count(const arch_keys *a, const char *suffix, int required, int32_t dflt,
                            int32_t *out)
{
    char key[96];
    key_of(a, suffix, key, sizeof key);
    int64_t v;
    int found;
    MOP_TRY(gguf_get_int(a->g, key, &v, &found));
    if (!found) {
        if (required)
            return mop_fail(MOP_E_FORMAT, "metadata %s is missing", key);
        *out = dflt;
        return MOP_OK;
    }
    if (v <= 0 || v > INT32_MAX)
        return mop_fail(MOP_E_FORMAT, "metadata %s = %lld is out of range", key, (long long)v);
    *out = (int32_t)v;
    return MOP_OK;
}

static mop_status get_real(const arch_keys *a, const char *suffix, float dflt, float *out,
                           int *found_out)
{
    char key[96];
    key_of(a, suffix, key, sizeof key);
    double v;
    int found;
    MOP_TRY(gguf_get_float(a->g, key, &v, &found));
    if (found_out)
        *found_out = found;
    if (!found) {
        *out = dflt;
        return MOP_OK;
    }
    if (!isfinite(v) || v < 0 || v > 3e38)
        return mop_fail(MOP_E_FORMAT, "metadata %s = %g is out of range", key, v);
    *out = (float)v;
    return MOP_OK;
}

static mop_status read_rope_scaling(const arch_keys *a, mop_hparams *hp)
{
    hp->rope_scaling = MOP_ROPE_SCALING_NONE;
    hp->rope_factor = 1.0f;
    char key[96];
    key_of(a, "rope.scaling.type", key, sizeof key);
    const char *s;
    size_t len;
    int found;
    MOP_TRY(gguf_get_str(a->g, key, &s, &len, &found));
    int linear = 1; /* llama.cpp's default when only a factor is given */
    if (found) {
        if (len == 4 && memcmp(s, "none", 4) == 0)
            linear = 0;
        else if (!(len == 6 && memcmp(s, "linear", 6) == 0))
            return mop_fail(MOP_E_UNSUPPORTED, "metadata %s = \"%.*s\" is not supported (none, linear)",
                            key, (int)MOP_MIN(len, 64), s);
    }
    float factor = 0.0f;
    int has_factor;
    MOP_TRY(get_real(a, "rope.scaling.factor", 0.0f, &factor, &has_factor));
    if (!has_factor)
        MOP_TRY(get_real(a, "rope.scale_linear", 0.0f, &factor, &has_factor));
    if (linear && has_factor && factor != 0.0f && factor != 1.0f) {
        hp->rope_scaling = MOP_ROPE_SCALING_LINEAR;
        hp->rope_factor = factor;
    }
    return MOP_OK;
}

static mop_status read_hparams(const arch_keys *a, mop_hparams *hp)
{
    const gguf_file *g = a->g;
    memset(hp, 0, sizeof *hp);
    MOP_TRY(get_count(a, "block_count", 1, 0, &hp->n_layer));
    MOP_TRY(get_count(a, "embedding_length", 1, 0, &hp->n_embd));
    MOP_TRY(get_count(a, "feed_forward_length", 1, 0, &hp->n_ff));
    MOP_TRY(get_count(a, "attention.head_count", 1, 0, &hp->n_head));
    MOP_TRY(get_count(a, "attention.head_count_kv", 0, hp->n_head, &hp->n_head_kv));
    MOP_TRY(get_count(a, "context_length", 0, 2048, &hp->n_ctx_train));

    int32_t head_dim = 0, v_dim = 0;
    MOP_TRY(get_count(a, "attention.key_length", 0, 0, &head_dim));
    if (!head_dim) {
        if (hp->n_embd % hp->n_head != 0)
            return mop_fail(MOP_E_FORMAT, "%s.embedding_length = %d is not a multiple of "
                            "%s.attention.head_count = %d", a->arch, hp->n_embd, a->arch, hp->n_head);
        head_dim = hp->n_embd / hp->n_head;
    }
    MOP_TRY(get_count(a, "attention.value_length", 0, head_dim, &v_dim));
    if (v_dim != head_dim)
        return mop_fail(MOP_E_UNSUPPORTED, "%s.attention.value_length = %d differs from the key "
                        "length %d", a->arch, v_dim, head_dim);
    hp->head_dim = head_dim;
    MOP_TRY(get_count(a, "rope.dimension_count", 0, head_dim, &hp->n_rot));

    MOP_TRY(get_real(a, "rope.freq_base", 10000.0f, &hp->rope_theta, NULL));
    MOP_TRY(get_real(a, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps, NULL));
    MOP_TRY(read_rope_scaling(a, hp));

    int32_t n_vocab = 0;
    MOP_TRY(get_count(a, "vocab_size", 0, 0, &n_vocab));
    if (!n_vocab) {
        const mop_src_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
        if (!emb)
            return mop_fail(MOP_E_FORMAT, "tensor token_embd.weight is missing");
        if (emb->dims[0] > INT32_MAX)
            return mop_fail(MOP_E_FORMAT, "token_embd.weight has %lld rows",
                            (long long)emb->dims[0]);
        n_vocab = (int32_t)emb->dims[0];
    }
    hp->n_vocab = n_vocab;
    hp->tied_embeddings = gguf_find_tensor(g, "output.weight") == NULL;
    return MOP_OK;
}

/* Assemble src with the prebuilt weights of every codec (weight_codec.h):
 * their arrays are joined for assembly, which moves out the weights it
 * uses, then each codec releases what is left of its own part. */
static mop_status assemble_with_codecs(mop_model *m, const gguf_file *g, mop_model_source *src,
                                       const mop_model_params *p)
{
    enum { MAX_CODECS = 8 };
    mop_src_weight *part[MAX_CODECS] = {0};
    int64_t n_part[MAX_CODECS] = {0}, total = 0;
    int n_codecs = 0;
    mop_status st = MOP_OK;
    for (; n_codecs < MAX_CODECS && mop_gguf_codecs[n_codecs] && st == MOP_OK; n_codecs++) {
        st = mop_gguf_codecs[n_codecs]->load(g, src->hp.n_layer, &part[n_codecs],
                                              &n_part[n_codecs]);
        total += n_part[n_codecs];
    }
    mop_src_weight *all = NULL;
    if (st == MOP_OK && total > 0) {
        all = mop_alloc((size_t)total * sizeof *all);
        if (!all)
            st = mop_fail(MOP_E_NOMEM, "out of memory for %lld prebuilt weights", (long long)total);
    }
    if (st == MOP_OK) {
        for (int c = 0, at = 0; c < n_codecs; at += (int)n_part[c], c++)
            if (n_part[c])
                memcpy(all + at, part[c], (size_t)n_part[c] * sizeof *all);
        src->weights = all;
        src->n_weights = total;
        st = mop_model_assemble(m, src, p);
        for (int c = 0, at = 0; c < n_codecs; at += (int)n_part[c], c++)
            if (n_part[c])
                memcpy(part[c], all + at, (size_t)n_part[c] * sizeof *all);
    }
    for (int c = 0; c < n_codecs; c++)
        mop_gguf_codecs[c]->release(part[c], n_part[c]);
    mop_free(all);
    src->weights = NULL;
    src->n_weights = 0;
    return st;
}

static mop_status load_parsed(mop_model *m, const gguf_file *g, size_t file_bytes,
                              const mop_model_params *p)
{
    arch_keys a = {g, ""};
    const char *s;
    size_t len;
    int found;
    MOP_TRY(gguf_get_str(g, "general.architecture", &s, &len, &found));
    if (!found)
        return mop_fail(MOP_E_FORMAT, "metadata general.architecture is missing");
    int known = 0;
    for (size_t i = 0; i < sizeof llama_like / sizeof llama_like[0]; i++)
        known |= strlen(llama_like[i]) == len && memcmp(llama_like[i], s, len) == 0;
    if (!known)
        return mop_fail(MOP_E_UNSUPPORTED, "architecture \"%.*s\" is not supported (llama only)",
                        (int)MOP_MIN(len, 64), s);
    memcpy(a.arch, s, len);
    a.arch[len] = '\0';

    if (gguf_find_tensor(g, "rope_freqs.weight"))
        return mop_fail(MOP_E_UNSUPPORTED,
                        "tensor rope_freqs.weight (per-frequency RoPE factors, Llama 3.1 style) "
                        "is not supported in GGUF files");

    mop_hparams hp;
    MOP_TRY(read_hparams(&a, &hp));

    char name[128] = "";
    MOP_TRY(gguf_get_str(g, "general.name", &s, &len, &found));
    if (found)
        snprintf(name, sizeof name, "%.*s", (int)MOP_MIN(len, sizeof name - 1), s);

    /* A GGUF without tokenizer metadata still loads; tokenizer calls then
     * report MOP_E_UNSUPPORTED and callers feed token ids directly. */
    MOP_TRY(gguf_get_str(g, "tokenizer.ggml.model", &s, &len, &found));
    if (found)
        MOP_TRY(mop_tokenizer_from_gguf(g, &m->tok));
    int32_t tok_vocab = m->tok ? mop_tokenizer_n_vocab(m->tok) : 0;
    if (tok_vocab > hp.n_vocab)
        return mop_fail(MOP_E_SHAPE, "the tokenizer has %d tokens but the model only %d "
                        "embeddings", tok_vocab, hp.n_vocab);

    mop_model_source src = {
        .hp = hp,
        .arch = a.arch,
        .name = name,
        .file_kind = "gguf",
        .file_bytes = file_bytes,
        .tensors = gguf_tensor(g, 0),
        .n_tensors = gguf_n_tensors(g),
        .qk_rope_halves = 0,
    };
    /* weights the format modules packed into tensors of their own */
    return assemble_with_codecs(m, g, &src, p);
}

mop_status mop_load_gguf(mop_model *m, const char *path, const mop_model_params *p)
{
    MOP_CHECK_ARG(m && path && p);
    void *addr = NULL;
    size_t size = 0;
    MOP_TRY(mop_map_file(path, &addr, &size));
    mop_status st = mop_model_add_mapping(m, addr, size);
    if (st != MOP_OK) {
        mop_unmap_file(addr, size);
        return st;
    }
    gguf_file *g = NULL;
    MOP_TRY(gguf_parse(addr, size, NULL, &g));
    st = load_parsed(m, g, size, p);
    gguf_free(g);
    return st;
}
