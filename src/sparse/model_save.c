/* Pruned models in GGUF: mop_model_save and the loader's side
 * (pruned_gguf.h). Layout in docs/FORMAT.md, "Pruned models in GGUF".
 *
 * Saved file: the source's metadata (tokenizer included) copied entry by
 * entry when the model came from a GGUF file, the hyper-parameters written
 * from the model, mop.* keys describing the pruning, dense tensors as F32,
 * every packed weight as "<name>.sparse" (I8, the serialised stream of
 * sparse.h), and a compact LM head as its own F16 / Q8_0 "output.weight". */
#include <stdio.h>
#include <string.h>

#include "libmop/mop_sparse.h"
#include "fileio.h"
#include "gguf_write.h"
#include "lm_head.h"
#include "pruned_gguf.h"
#include "sparse.h"

#define MOP_FORMAT_VERSION 1

/* ---- save ------------------------------------------------------------------ */

static mop_status emit_sparse(FILE *f, const void *obj, uint64_t nbytes)
{
    void *buf = mop_alloc(nbytes ? (size_t)nbytes : 1);
    if (!buf)
        return mop_fail(MOP_E_NOMEM, "out of memory serialising a sparse weight (%llu bytes)",
                        (unsigned long long)nbytes);
    mop_status st = sparse_weight_serialize(obj, buf, (size_t)nbytes);
    if (st == MOP_OK)
        st = mop_fwrite_all(f, buf, (size_t)nbytes);
    mop_free(buf);
    return st;
}

static mop_status emit_dense(FILE *f, const void *obj, uint64_t nbytes)
{
    const mop_weight *w = obj;
    float *buf = mop_alloc((size_t)nbytes);
    if (!buf)
        return mop_fail(MOP_E_NOMEM, "out of memory converting a weight (%llu bytes)",
                        (unsigned long long)nbytes);
    w->ops->to_dense(w, buf);
    mop_status st = mop_fwrite_all(f, buf, (size_t)nbytes);
    mop_free(buf);
    return st;
}

static mop_status add_weight(gguf_writer *gw, const char *name, const mop_weight *w)
{
    int64_t dims[2] = {w->rows, w->cols};
    if (sparse_is_sparse(w)) {
        size_t n;
        MOP_TRY(sparse_weight_serialize_size(w, &n));
        char nm[96];
        snprintf(nm, sizeof nm, "%s%s", name, PRUNED_GGUF_SUFFIX);
        int64_t len = (int64_t)n;
        return gguf_writer_tensor(gw, nm, MOP_FT_I8, 1, &len, NULL, n, emit_sparse, w);
    }
    int32_t ft;
    const void *data;
    uint64_t nb;
    if (lm_head_raw(w, &ft, &data, &nb))
        return gguf_writer_tensor(gw, name, (uint32_t)ft, 2, dims, data, nb, NULL, NULL);
    nb = (uint64_t)(w->rows * w->cols) * sizeof(float);
    return gguf_writer_tensor(gw, name, MOP_FT_F32, 2, dims, w->data, nb,
                              w->data ? NULL : emit_dense, w);
}

static mop_status add_vec(gguf_writer *gw, const char *name, const float *v, int64_t n)
{
    return gguf_writer_tensor(gw, name, MOP_FT_F32, 1, &n, v, (uint64_t)n * sizeof(float), NULL,
                              NULL);
}

static int skip_key(const char *key, size_t len)
{
    return (len == 17 && memcmp(key, "general.alignment", 17) == 0) ||
           (len >= 4 && memcmp(key, "mop.", 4) == 0);
}

static mop_status add_metadata(gguf_writer *gw, const mop_model *m)
{
    const mop_hparams *hp = &m->hp;
    char k[96];
    const char *a = m->arch[0] ? m->arch : "llama";
#define KEY(s) (snprintf(k, sizeof k, "%s." s, a), k)
    MOP_TRY(gguf_writer_kv_str(gw, "general.architecture", a));
    if (m->name[0])
        MOP_TRY(gguf_writer_kv_str(gw, "general.name", m->name));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("block_count"), (uint32_t)hp->n_layer));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("context_length"), (uint32_t)hp->n_ctx_train));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("embedding_length"), (uint32_t)hp->n_embd));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("feed_forward_length"), (uint32_t)hp->n_ff));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("attention.head_count"), (uint32_t)hp->n_head));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("attention.head_count_kv"), (uint32_t)hp->n_head_kv));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("attention.key_length"), (uint32_t)hp->head_dim));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("attention.value_length"), (uint32_t)hp->head_dim));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("rope.dimension_count"), (uint32_t)hp->n_rot));
    MOP_TRY(gguf_writer_kv_u32(gw, KEY("vocab_size"), (uint32_t)hp->n_vocab));
    MOP_TRY(gguf_writer_kv_f32(gw, KEY("rope.freq_base"), hp->rope_theta));
    MOP_TRY(gguf_writer_kv_f32(gw, KEY("attention.layer_norm_rms_epsilon"), hp->norm_eps));
    MOP_TRY(gguf_writer_kv_str(gw, KEY("rope.scaling.type"),
                               hp->rope_scaling == MOP_ROPE_SCALING_LINEAR ? "linear" : "none"));
    if (hp->rope_scaling == MOP_ROPE_SCALING_LINEAR)
        MOP_TRY(gguf_writer_kv_f32(gw, KEY("rope.scaling.factor"), hp->rope_factor));
#undef KEY
    MOP_TRY(gguf_writer_kv_u32(gw, "mop.format_version", MOP_FORMAT_VERSION));
    double sp;
    const char *fmt;
    MOP_TRY(mop_model_sparsity(m, &sp, &fmt));
    MOP_TRY(gguf_writer_kv_str(gw, "mop.sparse.format", fmt));
    MOP_TRY(gguf_writer_kv_f32(gw, "mop.sparse.sparsity", (float)sp));
    int32_t ft;
    const void *data;
    uint64_t nb;
    if (lm_head_raw(&m->lm_head, &ft, &data, &nb))
        MOP_TRY(gguf_writer_kv_str(gw, "mop.lm_head.format", ft == MOP_FT_F16 ? "f16" : "q8_0"));
    /* the rest of the source's metadata, the tokenizer above all */
    if (strcmp(m->file_kind, "gguf") == 0 && m->n_maps > 0)
        MOP_TRY(gguf_writer_copy_kvs(gw, m->maps[0].addr, m->maps[0].size, skip_key));
    return MOP_OK;
}

static mop_status build(gguf_writer *gw, const mop_model *m)
{
    const mop_hparams *hp = &m->hp;
    MOP_TRY(add_metadata(gw, m));
    int64_t emb[2] = {hp->n_vocab, hp->n_embd};
    MOP_TRY(gguf_writer_tensor(gw, "token_embd.weight", MOP_FT_F32, 2, emb, m->tok_embd,
                               (uint64_t)(emb[0] * emb[1]) * sizeof(float), NULL, NULL));
    static const char *const names[7] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                         "ffn_gate", "ffn_up", "ffn_down"};
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const mop_layer *L = &m->layers[l];
        const mop_weight *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up,
                                   &L->w_down};
        char nm[96];
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        MOP_TRY(add_vec(gw, nm, L->attn_norm, hp->n_embd));
        for (int i = 0; i < 7; i++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, names[i]);
            MOP_TRY(add_weight(gw, nm, ws[i]));
        }
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        MOP_TRY(add_vec(gw, nm, L->ffn_norm, hp->n_embd));
    }
    MOP_TRY(add_vec(gw, "output_norm.weight", m->out_norm, hp->n_embd));
    if (!(m->lm_head.data && m->lm_head.data == m->tok_embd))
        MOP_TRY(add_weight(gw, "output.weight", &m->lm_head));
    return MOP_OK;
}

static mop_status write_cb(FILE *f, void *user)
{
    return gguf_writer_write(user, f);
}

mop_status mop_model_save(const mop_model *model, const char *path)
{
    return mop_model_save_v2(model, path, 0);
}

mop_status mop_model_save_v2(const mop_model *model, const char *path, int32_t flags)
{
    MOP_CHECK_ARG(model && path && model->layers && model->tok_embd);
    MOP_CHECK_ARG((flags & ~MOP_SAVE_PRIVATE) == 0);
    if (model->hp.rope_scaling == MOP_ROPE_SCALING_LLAMA3)
        return mop_fail(MOP_E_UNSUPPORTED, "mop_model_save: Llama 3.1 RoPE scaling has no GGUF "
                        "metadata libmop reads back");
    gguf_writer *gw = NULL;
    MOP_TRY(gguf_writer_create(&gw));
    mop_status st = build(gw, model);
    if (st == MOP_OK)
        st = mop_write_atomic_flags(path, flags, write_cb, gw);
    gguf_writer_free(gw);
    if (st != MOP_OK)
        mop_error_prefix("saving %s", path);
    return st;
}

/* ---- load ------------------------------------------------------------------- */

void pruned_gguf_weights_free(mop_src_weight *w, int64_t n)
{
    for (int64_t i = 0; w && i < n; i++) {
        if (w[i].w.ops && w[i].w.ops->release)
            w[i].w.ops->release(&w[i].w);
        mop_free((void *)w[i].name);
    }
    mop_free(w);
}

const mop_gguf_codec pruned_gguf_codec = {"pruned", pruned_gguf_weights,
                                          pruned_gguf_weights_free};

/* "blk.<l>.<linear>.weight" with l < n_layer. */
static int is_linear_name(const char *s, int32_t n_layer)
{
    static const char *const names[7] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                         "ffn_gate", "ffn_up", "ffn_down"};
    int l = -1, end = 0;
    char mid[32];
    if (sscanf(s, "blk.%d.%31[a-z_].weight%n", &l, mid, &end) != 2 || s[end] != '\0' || l < 0 ||
        l >= n_layer)
        return 0;
    char canon[96];
    snprintf(canon, sizeof canon, "blk.%d.%s.weight", l, mid);
    if (strcmp(canon, s) != 0) /* no leading zeros or signs */
        return 0;
    for (int i = 0; i < 7; i++)
        if (strcmp(mid, names[i]) == 0)
            return 1;
    return 0;
}

mop_status pruned_gguf_weights(const gguf_file *g, int32_t n_layer, mop_src_weight **out,
                               int64_t *n)
{
    MOP_CHECK_ARG(g && out && n);
    *out = NULL;
    *n = 0;
    const size_t sl = strlen(PRUNED_GGUF_SUFFIX);
    const char *hs;
    size_t hl;
    int has_head;
    MOP_TRY(gguf_get_str(g, "mop.lm_head.format", &hs, &hl, &has_head));
    int64_t count = has_head;
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const char *nm = gguf_tensor(g, i)->name;
        size_t len = strlen(nm);
        count += len > sl && strcmp(nm + len - sl, PRUNED_GGUF_SUFFIX) == 0;
    }
    /* mop.format_version: a newer layout than this library reads is refused
     * rather than misread; a file with libmop's packed tensors must have it */
    int64_t version = 0;
    int has_version = 0;
    MOP_TRY(gguf_get_int(g, "mop.format_version", &version, &has_version));
    if (has_version && version > MOP_FORMAT_VERSION)
        return mop_fail(MOP_E_UNSUPPORTED, "mop.format_version %lld: written by a newer libmop "
                        "(this one reads pruned GGUF files up to version %d)",
                        (long long)version, MOP_FORMAT_VERSION);
    if (has_version && version < 1)
        return mop_fail(MOP_E_FORMAT, "mop.format_version %lld is not a version (>= 1)",
                        (long long)version);
    if (count && !has_version)
        return mop_fail(MOP_E_FORMAT, "the file has libmop packed weights or a compact LM head "
                        "but no mop.format_version");
    if (!count)
        return MOP_OK;
    mop_src_weight *ws = mop_calloc((size_t)count, sizeof *ws);
    if (!ws)
        return mop_fail(MOP_E_NOMEM, "out of memory for %lld packed weights", (long long)count);
    int64_t k = 0;
    mop_status st = MOP_OK;
    for (int64_t i = 0; st == MOP_OK && i < gguf_n_tensors(g); i++) {
        const mop_src_tensor *t = gguf_tensor(g, i);
        size_t len = strlen(t->name);
        if (!(len > sl && strcmp(t->name + len - sl, PRUNED_GGUF_SUFFIX) == 0))
            continue;
        char *canon = mop_alloc(len - sl + 1);
        if (!canon) {
            st = mop_fail(MOP_E_NOMEM, "out of memory for tensor names");
            break;
        }
        memcpy(canon, t->name, len - sl);
        canon[len - sl] = '\0';
        ws[k].name = canon;
        k++;
        if (!is_linear_name(canon, n_layer))
            st = mop_fail(MOP_E_FORMAT, "tensor %s: packed weights are only allowed for the "
                          "linear weights of blocks 0..%d", t->name, n_layer - 1);
        else if (gguf_find_tensor(g, canon))
            st = mop_fail(MOP_E_FORMAT, "tensor %s is stored both dense and packed (%s)", canon,
                          t->name);
        else if (t->ftype != MOP_FT_I8 || t->n_dims != 1)
            st = mop_fail(MOP_E_FORMAT, "tensor %s: a packed weight must be a 1-D I8 tensor",
                          t->name);
        if (st == MOP_OK) {
            st = sparse_weight_deserialize(&ws[k - 1].w, t->data, (size_t)t->nbytes);
            if (st != MOP_OK)
                mop_error_prefix("tensor %s", t->name);
        }
    }
    if (st == MOP_OK && has_head) {
        int32_t ft = hl == 3 && memcmp(hs, "f16", 3) == 0    ? MOP_FT_F16
                     : hl == 4 && memcmp(hs, "q8_0", 4) == 0 ? MOP_FT_Q8_0
                                                              : -1;
        const mop_src_tensor *t = gguf_find_tensor(g, "output.weight");
        ws[k].name = mop_strdup("output.weight");
        k++;
        if (!ws[k - 1].name)
            st = mop_fail(MOP_E_NOMEM, "out of memory for tensor names");
        else if (ft < 0)
            st = mop_fail(MOP_E_FORMAT, "metadata mop.lm_head.format = \"%.*s\" (f16 or q8_0)",
                          (int)MOP_MIN(hl, 32), hs);
        else if (!t || t->ftype != ft || t->n_dims != 2)
            st = mop_fail(MOP_E_FORMAT, "mop.lm_head.format is %.*s but output.weight is %s",
                          (int)hl, hs, t ? "a tensor of another type or shape" : "missing");
        else
            st = lm_head_wrap(&ws[k - 1].w, t->data, ft, t->dims[0], t->dims[1]);
    }
    if (st != MOP_OK) {
        pruned_gguf_weights_free(ws, k);
        return st;
    }
    *out = ws;
    *n = k;
    return MOP_OK;
}
