/* The model object: lifetime, assembly from a file's tensors, the public
 * load/info calls and format detection. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "loaders.h"
#include "model.h"
#include "tokenizer.h"

/* ---- lifetime ------------------------------------------------------------- */

mop_status mop_model_alloc(mop_model **out)
{
    MOP_CHECK_ARG(out);
    mop_model *m = mop_calloc(1, sizeof *m);
    if (!m)
        return mop_fail(MOP_E_NOMEM, "out of memory for the model");
    atomic_init(&m->refs, 1);
    *out = m;
    return MOP_OK;
}

mop_status mop_model_add_mapping(mop_model *m, void *addr, size_t size)
{
    MOP_CHECK_ARG(m);
    if (!addr || !size)
        return MOP_OK; /* an empty file maps to nothing */
    mop_mapping *maps = mop_alloc(((size_t)m->n_maps + 1) * sizeof *maps);
    if (!maps)
        return mop_fail(MOP_E_NOMEM, "out of memory recording a file mapping");
    if (m->n_maps)
        memcpy(maps, m->maps, (size_t)m->n_maps * sizeof *maps);
    maps[m->n_maps] = (mop_mapping){addr, size};
    mop_free(m->maps);
    m->maps = maps;
    m->n_maps++;
    return MOP_OK;
}

mop_status mop_model_add_buffer(mop_model *m, void *buf)
{
    MOP_CHECK_ARG(m);
    if (!buf)
        return MOP_OK;
    if (m->n_buffers == m->cap_buffers) {
        int32_t cap = m->cap_buffers ? 2 * m->cap_buffers : 16;
        void **bufs = mop_alloc((size_t)cap * sizeof *bufs);
        if (!bufs)
            return mop_fail(MOP_E_NOMEM, "out of memory recording a weight buffer");
        if (m->n_buffers)
            memcpy(bufs, m->buffers, (size_t)m->n_buffers * sizeof *bufs);
        mop_free(m->buffers);
        m->buffers = bufs;
        m->cap_buffers = cap;
    }
    m->buffers[m->n_buffers++] = buf;
    return MOP_OK;
}

void mop_model_retain(mop_model *m)
{
    if (m)
        atomic_fetch_add(&m->refs, 1);
}

static void release_weight(mop_weight *w)
{
    if (w->ops && w->ops->release)
        w->ops->release(w);
    w->ops = NULL;
}

void mop_model_free(mop_model *m)
{
    if (!m || atomic_fetch_sub(&m->refs, 1) != 1)
        return;
    for (int32_t l = 0; m->layers && l < m->hp.n_layer; l++) {
        mop_layer *L = &m->layers[l];
        mop_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            release_weight(ws[i]);
    }
    release_weight(&m->lm_head);
    mop_free(m->layers);
    mop_tokenizer_free(m->tok);
    for (int32_t i = 0; i < m->n_tensors; i++)
        mop_free(m->tensors[i].name);
    mop_free(m->tensors);
    for (int32_t i = 0; i < m->n_buffers; i++)
        mop_free(m->buffers[i]);
    mop_free(m->buffers);
    for (int32_t i = 0; i < m->n_maps; i++)
        mop_unmap_file(m->maps[i].addr, m->maps[i].size);
    mop_free(m->maps);
    mop_free(m);
}

/* ---- assembly ------------------------------------------------------------- */

static mop_status check_hparams(const mop_hparams *hp)
{
    const struct {
        const char *name;
        int32_t v;
    } pos[] = {{"n_layer", hp->n_layer}, {"n_embd", hp->n_embd},   {"n_ff", hp->n_ff},
               {"n_head", hp->n_head},   {"n_head_kv", hp->n_head_kv}, {"head_dim", hp->head_dim},
               {"n_vocab", hp->n_vocab}, {"n_ctx_train", hp->n_ctx_train}, {"n_rot", hp->n_rot}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v <= 0)
            return mop_fail(MOP_E_FORMAT, "hyper-parameter %s = %d must be positive", pos[i].name,
                            pos[i].v);
    if ((int64_t)hp->n_head * hp->head_dim > INT32_MAX)
        return mop_fail(MOP_E_FORMAT, "n_head * head_dim = %d * %d overflows", hp->n_head,
                        hp->head_dim);
    if (hp->n_head % hp->n_head_kv != 0)
        return mop_fail(MOP_E_FORMAT, "n_head = %d is not a multiple of n_head_kv = %d",
                        hp->n_head, hp->n_head_kv);
    if (hp->n_rot % 2 != 0 || hp->n_rot > hp->head_dim)
        return mop_fail(MOP_E_FORMAT, "n_rot = %d must be even and at most head_dim = %d",
                        hp->n_rot, hp->head_dim);
    if (!(hp->norm_eps > 0.0f && hp->norm_eps < 1.0f))
        return mop_fail(MOP_E_FORMAT, "norm_eps = %g must be in (0, 1)", (double)hp->norm_eps);
    if (!(hp->rope_theta > 0.0f && hp->rope_theta < 1e30f))
        return mop_fail(MOP_E_FORMAT, "rope_theta = %g must be positive and finite",
                        (double)hp->rope_theta);
    if (hp->rope_scaling != MOP_ROPE_SCALING_NONE && !(hp->rope_factor > 0.0f && hp->rope_factor < 1e30f))
        return mop_fail(MOP_E_FORMAT, "rope scaling factor %g must be positive and finite",
                        (double)hp->rope_factor);
    if (hp->rope_scaling < MOP_ROPE_SCALING_NONE || hp->rope_scaling > MOP_ROPE_SCALING_LLAMA3)
        return mop_fail(MOP_E_FORMAT, "unknown rope scaling %d", hp->rope_scaling);
    return MOP_OK;
}

static int cmp_src_name(const void *a, const void *b)
{
    const mop_src_tensor *x = *(const mop_src_tensor *const *)a;
    const mop_src_tensor *y = *(const mop_src_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static const mop_src_tensor *find_src(const mop_src_tensor *const *idx, int64_t n, const char *name)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int r = strcmp(idx[mid]->name, name);
        if (r == 0)
            return idx[mid];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* One tensor to place: where its F32 data goes, with its expected shape. */
typedef struct load_job {
    char name[64];
    const mop_src_tensor *t;
    int64_t rows, cols;     /* 1-D tensors: rows = 1 */
    int32_t n_dims;
    int32_t rope_heads;     /* >0: permute rows from HF half-split to interleaved pairs */
    mop_weight *w;          /* linear weights */
    const float **vec;      /* vectors and the embedding table */
    const float *data;      /* the F32 result */
    mop_src_weight *pre;    /* a prebuilt weight used instead of t */
} load_job;

/* Destination row of source row r: within each head of hd rows, row
 * t*hd/2 + i goes to 2i + t. */
static int64_t rope_dst_row(int64_t r, int64_t hd)
{
    int64_t h = r / hd, rl = r % hd, half = hd / 2;
    return h * hd + 2 * (rl % half) + rl / half;
}

typedef struct convert_task {
    const load_job *job;
    float *dst;             /* NULL: only check the F32 source in place */
    uint64_t row_bytes;
    int64_t head_dim;
    _Atomic int64_t first_bad; /* smallest row * cols + col holding NaN/Inf; INT64_MAX: none */
} convert_task;

/* Index of the first NaN/Inf in x[0..n), or -1. The exponent test on the
 * bits is branch-free over the row, so the common all-finite case is one
 * pass at memory speed. */
static int64_t first_nonfinite(const float *x, int64_t n)
{
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    if (!bad)
        return -1;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return -1;
}

static void note_bad(convert_task *ct, int64_t at)
{
    int64_t cur = atomic_load(&ct->first_bad);
    while (at < cur && !atomic_compare_exchange_weak(&ct->first_bad, &cur, at)) {
    }
}

// dst (rows, cols) F32 <- src rows (rows, cols) in the file's type, each row
// checked for NaN/Inf as it is written (or, dst NULL, the F32 source checked)
static void convert_rows(void *arg, int ith, int nth)
{
    convert_task *ct = arg;
    const load_job *j = ct->job;
    const uint8_t *src = j->t->data;
    int64_t lo, hi;
    mop_split_range(j->rows, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const float *row;
        if (ct->dst) {
            int64_t d = j->rope_heads ? rope_dst_row(r, ct->head_dim) : r;
            mop_dequantize(ct->dst + d * j->cols, src + (uint64_t)r * ct->row_bytes, j->t->ftype,
                           j->cols);
            row = ct->dst + d * j->cols;
        } else {
            row = (const float *)(const void *)(src + (uint64_t)r * ct->row_bytes);
        }
        int64_t c = first_nonfinite(row, j->cols);
        if (c >= 0) {
            note_bad(ct, r * j->cols + c);
            return; /* later rows of this part cannot be earlier */
        }
    }
}

/* MOP_E_FORMAT naming the tensor and the first non-finite value, if any. */
static mop_status check_finite(const convert_task *ct)
{
    int64_t at = atomic_load(&ct->first_bad);
    if (at == INT64_MAX)
        return MOP_OK;
    const load_job *j = ct->job;
    int64_t r = at / j->cols, c = at % j->cols;
    const float *row;
    if (ct->dst)
        row = ct->dst + (j->rope_heads ? rope_dst_row(r, ct->head_dim) : r) * j->cols;
    else
        row = (const float *)(const void *)((const uint8_t *)j->t->data + (uint64_t)r * ct->row_bytes);
    float v = row[c];
    const char *ft = mop_ftype_name(j->t->ftype);
    return mop_fail(MOP_E_FORMAT, "tensor %s (%s): element [%lld, %lld] is %s; a model's weights "
                    "must be finite", j->name, ft ? ft : "?", (long long)r, (long long)c,
                    isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");
}

static void shape_str(char *buf, size_t cap, int32_t n_dims, const int64_t *dims)
{
    size_t at = (size_t)snprintf(buf, cap, "(");
    for (int32_t i = 0; i < n_dims && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "", (long long)dims[i]);
    if (at < cap)
        snprintf(buf + at, cap - at, ")");
}

/* A prebuilt weight for job j, checked against its shape. */
static mop_status bind_prebuilt(load_job *j, const mop_model_source *src)
{
    for (int64_t i = 0; j->w && i < src->n_weights; i++) {
        mop_src_weight *p = &src->weights[i];
        if (!p->w.ops || strcmp(p->name, j->name) != 0)
            continue;
        if (p->w.rows != j->rows || p->w.cols != j->cols)
            return mop_fail(MOP_E_SHAPE, "tensor %s: expected shape (%lld, %lld), got (%lld, %lld)",
                            j->name, (long long)j->rows, (long long)j->cols,
                            (long long)p->w.rows, (long long)p->w.cols);
        j->pre = p;
    }
    return MOP_OK;
}

/* Find job->name in the source and check its shape. */
static mop_status bind_job(load_job *j, const mop_src_tensor *const *idx, int64_t n)
{
    if (j->pre)
        return MOP_OK;
    j->t = find_src(idx, n, j->name);
    if (!j->t)
        return mop_fail(MOP_E_FORMAT, "tensor %s is missing", j->name);
    int64_t want[2] = {j->rows, j->cols};
    const int64_t *wd = j->n_dims == 1 ? &want[1] : want;
    int ok = j->t->n_dims == j->n_dims;
    for (int32_t i = 0; ok && i < j->n_dims; i++)
        ok = j->t->dims[i] == wd[i];
    if (!ok) {
        char e[64], g[96];
        shape_str(e, sizeof e, j->n_dims, wd);
        shape_str(g, sizeof g, j->t->n_dims, j->t->dims);
        return mop_fail(MOP_E_SHAPE, "tensor %s: expected shape %s, got %s", j->name, e, g);
    }
    return MOP_OK;
}

static void add_job(load_job *jobs, int *n, const char *name, int64_t rows, int64_t cols,
                    int32_t n_dims, mop_weight *w, const float **vec)
{
    load_job *j = &jobs[(*n)++];
    memset(j, 0, sizeof *j);
    snprintf(j->name, sizeof j->name, "%s", name);
    j->rows = rows;
    j->cols = cols;
    j->n_dims = n_dims;
    j->w = w;
    j->vec = vec;
}

/* Drop the resident file pages of a tensor that was just converted into its
 * own buffer: without this the load peaks at the whole file plus the F32
 * weights. The mapping is private and read-only, so a later read (tensor
 * info, a re-save) faults the pages back in from the file; data outside
 * m's file mappings (a caller's buffer) is left alone. */
static void release_source(const mop_model *m, const mop_src_tensor *t)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)t->data, hi = lo + t->nbytes;
    for (int32_t i = 0; page > 0 && i < m->n_maps; i++) {
        uintptr_t a = (uintptr_t)m->maps[i].addr, b = a + m->maps[i].size;
        if (lo < a || hi > b)
            continue;
        uintptr_t first = (lo + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
        uintptr_t last = hi & ~((uintptr_t)page - 1);
        if (last > first)
            (void)madvise((void *)first, last - first, MADV_DONTNEED);
        return;
    }
}

/* Make job j's F32 data: borrow the mapping or convert into a model buffer. */
static mop_status run_job(mop_model *m, load_job *j, const mop_model_params *p, mop_pool **pool,
                          int64_t head_dim)
{
    const mop_src_tensor *t = j->t;
    if (j->pre)
        return MOP_OK;
    uint64_t row_bytes = mop_ftype_nbytes(t->ftype, j->cols);
    if (!row_bytes || t->nbytes != row_bytes * (uint64_t)j->rows)
        return mop_fail(MOP_E_FORMAT, "tensor %s: %llu bytes of %s do not hold (%lld, %lld) values",
                        j->name, (unsigned long long)t->nbytes,
                        mop_ftype_name(t->ftype) ? mop_ftype_name(t->ftype) : "?",
                        (long long)j->rows, (long long)j->cols);
    size_t n;
    if (!mop_mul_ok((size_t)j->rows, (size_t)j->cols, &n) || !mop_mul_ok(n, sizeof(float), &n))
        return mop_fail(MOP_E_NOMEM, "tensor %s: size overflows", j->name);
    if (t->ftype == MOP_FT_F32 && p->use_mmap && !j->rope_heads &&
        (uintptr_t)t->data % _Alignof(float) == 0) {
        /* borrowed from the mapping: checked in place (this reads the pages
         * the first forward would read anyway) */
        if (!*pool && p->n_threads != 1 && n >= ((size_t)1 << 16))
            MOP_TRY(mop_pool_create(p->n_threads, pool));
        convert_task ct = {j, NULL, row_bytes, head_dim, INT64_MAX};
        mop_pool_run(n >= ((size_t)1 << 16) ? *pool : NULL, convert_rows, &ct);
        MOP_TRY(check_finite(&ct));
        j->data = t->data;
        return MOP_OK;
    }
    float *buf = mop_alloc(n);
    if (!buf)
        return mop_fail(MOP_E_NOMEM, "tensor %s: out of memory for %zu bytes", j->name, n);
    mop_status st = mop_model_add_buffer(m, buf);
    if (st != MOP_OK) {
        mop_free(buf);
        return st;
    }
    /* Big tensors are split by rows over the pool, created on first need. */
    if (!*pool && p->n_threads != 1 && n >= ((size_t)1 << 16))
        MOP_TRY(mop_pool_create(p->n_threads, pool));
    convert_task ct = {j, buf, row_bytes, head_dim, INT64_MAX};
    mop_pool_run(n >= ((size_t)1 << 16) ? *pool : NULL, convert_rows, &ct);
    MOP_TRY(check_finite(&ct));
    j->data = buf;
    release_source(m, t);
    return MOP_OK;
}

static mop_status record_tensors(mop_model *m, const mop_model_source *src)
{
    if (src->n_tensors > INT32_MAX)
        return mop_fail(MOP_E_FORMAT, "%lld tensors are too many", (long long)src->n_tensors);
    m->tensors = mop_calloc(src->n_tensors ? (size_t)src->n_tensors : 1, sizeof *m->tensors);
    if (!m->tensors)
        return mop_fail(MOP_E_NOMEM, "out of memory for %lld tensor records",
                        (long long)src->n_tensors);
    for (int64_t i = 0; i < src->n_tensors; i++) {
        const mop_src_tensor *t = &src->tensors[i];
        mop_tensor_record *r = &m->tensors[i];
        r->name = mop_strdup(t->name);
        if (!r->name)
            return mop_fail(MOP_E_NOMEM, "out of memory for tensor names");
        m->n_tensors = (int32_t)i + 1;
        r->ftype = t->ftype;
        r->n_dims = t->n_dims;
        for (int d = 0; d < 4; d++)
            r->dims[d] = d < t->n_dims ? t->dims[d] : 1;
    }
    return MOP_OK;
}

static mop_status assemble_jobs(mop_model *m, const mop_model_source *src,
                                const mop_model_params *p, load_job *jobs, int n_jobs,
                                const mop_src_tensor **idx)
{
    for (int64_t i = 0; i < src->n_tensors; i++)
        idx[i] = &src->tensors[i];
    qsort(idx, (size_t)src->n_tensors, sizeof *idx, cmp_src_name);
    for (int64_t i = 1; i < src->n_tensors; i++)
        if (strcmp(idx[i - 1]->name, idx[i]->name) == 0)
            return mop_fail(MOP_E_FORMAT, "duplicate tensor %s", idx[i]->name);
    for (int i = 0; i < n_jobs; i++) {
        MOP_TRY(bind_prebuilt(&jobs[i], src));
        MOP_TRY(bind_job(&jobs[i], idx, src->n_tensors));
    }

    mop_pool *pool = NULL;
    mop_status st = MOP_OK;
    for (int i = 0; i < n_jobs && st == MOP_OK; i++) {
        st = run_job(m, &jobs[i], p, &pool, m->hp.head_dim);
        if (st == MOP_OK && p->progress && p->progress((uint64_t)i + 1, (uint64_t)n_jobs,
                                                       p->progress_user) != 0)
            st = mop_fail(MOP_E_CANCELLED, "loading cancelled after %d of %d tensors", i + 1,
                          n_jobs);
    }
    mop_pool_free(pool);
    MOP_TRY(st);

    for (int i = 0; i < n_jobs; i++) {
        const load_job *j = &jobs[i];
        if (j->pre) {
            *j->w = j->pre->w;
            j->pre->w.ops = NULL;
        } else if (j->w)
            mop_weight_dense_init(j->w, j->data, j->rows, j->cols);
        else
            *j->vec = j->data;
    }
    return MOP_OK;
}

mop_status mop_model_assemble(mop_model *m, const mop_model_source *src,
                              const mop_model_params *params)
{
    MOP_CHECK_ARG(m && src && (src->tensors || src->n_tensors == 0) && src->n_tensors >= 0);
    MOP_CHECK_ARG(!m->layers && !m->tensors);
    mop_model_params p;
    if (params)
        p = *params;
    else
        mop_model_params_init(&p);
    mop_hparams hp = src->hp;
    MOP_TRY(check_hparams(&hp));
    if (src->qk_rope_halves && hp.head_dim % 2 != 0)
        return mop_fail(MOP_E_FORMAT, "head_dim = %d must be even to permute rotary rows",
                        hp.head_dim);

    snprintf(m->arch, sizeof m->arch, "%s", src->arch ? src->arch : "");
    snprintf(m->name, sizeof m->name, "%s", src->name ? src->name : "");
    snprintf(m->file_kind, sizeof m->file_kind, "%s", src->file_kind ? src->file_kind : "");
    m->file_bytes = src->file_bytes;
    MOP_TRY(record_tensors(m, src));

    /* Tied when the file says so or has no separate output matrix. */
    int has_output = 0;
    for (int64_t i = 0; i < src->n_tensors && !has_output; i++)
        has_output = strcmp(src->tensors[i].name, "output.weight") == 0;
    hp.tied_embeddings = hp.tied_embeddings || !has_output;
    m->hp = hp;

    m->layers = mop_calloc((size_t)hp.n_layer, sizeof *m->layers);
    int max_jobs = 9 * hp.n_layer + 3;
    load_job *jobs = mop_calloc((size_t)max_jobs, sizeof *jobs);
    const mop_src_tensor **idx = mop_alloc(src->n_tensors ? (size_t)src->n_tensors * sizeof *idx : 1);
    mop_status st = MOP_OK;
    if (!m->layers || !jobs || !idx)
        st = mop_fail(MOP_E_NOMEM, "out of memory assembling %d layers", hp.n_layer);

    int n = 0;
    const int64_t d = hp.n_embd, q = (int64_t)hp.n_head * hp.head_dim,
                  kv = (int64_t)hp.n_head_kv * hp.head_dim, ff = hp.n_ff;
    if (st == MOP_OK) {
        add_job(jobs, &n, "token_embd.weight", hp.n_vocab, d, 2, NULL, &m->tok_embd);
        for (int32_t l = 0; l < hp.n_layer; l++) {
            mop_layer *L = &m->layers[l];
            char nm[64];
#define LAYER_JOB(suffix, r, c, nd, w, v)                                      \
    snprintf(nm, sizeof nm, "blk.%d." suffix, l);                              \
    add_job(jobs, &n, nm, r, c, nd, w, v)
            LAYER_JOB("attn_norm.weight", 1, d, 1, NULL, &L->attn_norm);
            LAYER_JOB("attn_q.weight", q, d, 2, &L->wq, NULL);
            if (src->qk_rope_halves)
                jobs[n - 1].rope_heads = hp.n_head;
            LAYER_JOB("attn_k.weight", kv, d, 2, &L->wk, NULL);
            if (src->qk_rope_halves)
                jobs[n - 1].rope_heads = hp.n_head_kv;
            LAYER_JOB("attn_v.weight", kv, d, 2, &L->wv, NULL);
            LAYER_JOB("attn_output.weight", d, q, 2, &L->wo, NULL);
            LAYER_JOB("ffn_norm.weight", 1, d, 1, NULL, &L->ffn_norm);
            LAYER_JOB("ffn_gate.weight", ff, d, 2, &L->w_gate, NULL);
            LAYER_JOB("ffn_up.weight", ff, d, 2, &L->w_up, NULL);
            LAYER_JOB("ffn_down.weight", d, ff, 2, &L->w_down, NULL);
#undef LAYER_JOB
        }
        add_job(jobs, &n, "output_norm.weight", 1, d, 1, NULL, &m->out_norm);
        if (!hp.tied_embeddings)
            add_job(jobs, &n, "output.weight", hp.n_vocab, d, 2, &m->lm_head, NULL);
        st = assemble_jobs(m, src, &p, jobs, n, idx);
    }
    if (st == MOP_OK && hp.tied_embeddings)
        mop_weight_dense_init(&m->lm_head, m->tok_embd, hp.n_vocab, d);
    mop_free(jobs);
    mop_free(idx);
    return st;
}

/* ---- public calls --------------------------------------------------------- */

/* Parameters and bytes, from the weights as they are now (a pruned model's
 * sparse weights report their own size); tied embeddings count once. */
static void count_weights(const mop_model *m, uint64_t *n_params, uint64_t *bytes)
{
    const mop_hparams *hp = &m->hp;
    uint64_t np = 0, nb = 0, d = (uint64_t)hp->n_embd;
    if (m->tok_embd) {
        np += (uint64_t)hp->n_vocab * d + d; /* embeddings and output norm */
        nb += ((uint64_t)hp->n_vocab * d + d) * sizeof(float);
    }
    for (int32_t l = 0; m->layers && l < hp->n_layer; l++) {
        const mop_layer *L = &m->layers[l];
        const mop_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        np += 2 * d;
        nb += 2 * d * sizeof(float);
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            if (!ws[i]->ops)
                continue;
            np += (uint64_t)ws[i]->rows * (uint64_t)ws[i]->cols;
            nb += ws[i]->ops->bytes(ws[i]);
        }
    }
    if (!hp->tied_embeddings && m->lm_head.ops) {
        np += (uint64_t)m->lm_head.rows * (uint64_t)m->lm_head.cols;
        nb += m->lm_head.ops->bytes(&m->lm_head);
    }
    *n_params = np;
    *bytes = nb;
}

/* 0.1.0 had progress_user last; prefixes through n_threads were accepted
 * before the rule in mop_version.h and stay so */
#define MODEL_PARAMS_MIN MOP_SIZE_THROUGH(mop_model_params, n_threads)

static void model_defaults(mop_model_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->n_threads = 0;
    d->use_mmap = 1;
    d->progress = NULL;
    d->progress_user = NULL;
}

MOP_DEFINE_PARAMS_INIT(model, MODEL_PARAMS_MIN)

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

typedef mop_status (*loader_fn)(mop_model *, const char *, const mop_model_params *);

static mop_status detect_format(const char *path, loader_fn *loader)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return mop_fail(MOP_E_IO, "cannot open: %s", strerror(errno));
    if (S_ISDIR(st.st_mode) || ends_with(path, ".safetensors") ||
        ends_with(path, ".safetensors.index.json")) {
        *loader = mop_load_safetensors;
        return MOP_OK;
    }
    FILE *f = fopen(path, "rb");
    if (!f)
        return mop_fail(MOP_E_IO, "cannot open: %s", strerror(errno));
    unsigned char magic[4];
    size_t got = fread(magic, 1, sizeof magic, f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return mop_fail(MOP_E_IO, "read error");
    if (got == 4 && memcmp(magic, "GGUF", 4) == 0) {
        *loader = mop_load_gguf;
        return MOP_OK;
    }
    return mop_fail(MOP_E_FORMAT, "not a GGUF or safetensors file");
}

mop_status mop_model_load(const char *path, const mop_model_params *params, mop_model **out)
{
    MOP_CHECK_ARG(path && out);
    mop_model_params p;
    model_defaults(&p);
    if (params)
        MOP_READ_STRUCT("mop_model_load", &p, params, MODEL_PARAMS_MIN);
    if (p.n_threads < 0 || p.n_threads > 256)
        return mop_fail(MOP_E_INVALID_ARG, "mop_model_load: n_threads = %d (0 to 256)",
                        p.n_threads);

    loader_fn loader = NULL;
    mop_model *m = NULL;
    mop_status st = detect_format(path, &loader);
    if (st == MOP_OK)
        st = mop_model_alloc(&m);
    if (st == MOP_OK)
        st = loader(m, path, &p);
    if (st != MOP_OK) {
        mop_model_free(m);
        mop_error_prefix("%s", path);
        return st;
    }
    *out = m;
    return MOP_OK;
}

mop_status mop_model_get_info(const mop_model *model, mop_model_info *info)
{
    MOP_CHECK_ARG(model && info);
    MOP_CHECK_STRUCT_SIZE("mop_model_get_info", info, MOP_OUT_STRUCT_MIN);
    const mop_hparams *hp = &model->hp;
    mop_model_info r;
    memset(&r, 0, sizeof r);
    r.struct_size = info->struct_size;
    snprintf(r.arch, sizeof r.arch, "%s", model->arch);
    snprintf(r.name, sizeof r.name, "%s", model->name);
    r.n_layer = hp->n_layer;
    r.n_embd = hp->n_embd;
    r.n_ff = hp->n_ff;
    r.n_head = hp->n_head;
    r.n_head_kv = hp->n_head_kv;
    r.head_dim = hp->head_dim;
    r.n_vocab = hp->n_vocab;
    r.n_ctx_train = hp->n_ctx_train;
    r.rope_theta = hp->rope_theta;
    r.rope_scale = hp->rope_scaling == MOP_ROPE_SCALING_NONE ? 1.0f : hp->rope_factor;
    r.norm_eps = hp->norm_eps;
    r.tied_embeddings = hp->tied_embeddings;
    count_weights(model, &r.n_params, &r.weight_bytes);
    r.file_bytes = model->file_bytes;
    snprintf(r.file_type, sizeof r.file_type, "%s", model->file_kind);
    memcpy(info, &r, info->struct_size);
    return MOP_OK;
}

int32_t mop_model_tensor_count(const mop_model *model)
{
    return model ? model->n_tensors : 0;
}

mop_status mop_model_tensor_get_info(const mop_model *model, int32_t index,
                                     mop_tensor_info *info)
{
    MOP_CHECK_ARG(model && info);
    MOP_CHECK_STRUCT_SIZE("mop_model_tensor_get_info", info, MOP_OUT_STRUCT_MIN);
    if (index < 0 || index >= model->n_tensors)
        return mop_fail(MOP_E_RANGE, "tensor index %d out of range (model has %d tensors)",
                        index, model->n_tensors);
    const mop_tensor_record *t = &model->tensors[index];
    mop_tensor_info r;
    memset(&r, 0, sizeof r);
    r.struct_size = info->struct_size;
    r.name = t->name;
    r.file_type = mop_ftype_name(t->ftype) ? mop_ftype_name(t->ftype) : "?";
    r.n_dims = t->n_dims;
    for (int d = 0; d < 4; d++)
        r.dims[d] = t->dims[d];
    memcpy(info, &r, info->struct_size);
    return MOP_OK;
}
