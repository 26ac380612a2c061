/* Byte-level BPE (GPT-2 family).
 *
 * encode(text) = concat over pieces p of bpe(bytes(p)), where the pieces come
 * from (1) splitting out special tokens, (2) the pre-tokenizer regex, and
 * bpe() starts from one symbol per byte (the token of that byte's GPT-2
 * unicode stand-in) and repeatedly merges the adjacent pair of lowest merge
 * rank, leftmost first, until no ranked pair remains.
 * decode(ids) = concat of each token's text mapped back through the inverse
 * byte table. Everything the tokenizer keeps is copied at creation. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "tokenizer.h"
#include "tokenizer_unicode.h"
#include "tokenizer_util.h"

/* ---- pre-tokenizers -------------------------------------------------------
 * Hand-written scanners for the pre-tokenizer regexes (docs/TOKENIZER.md),
 * with the character classes of tokenizer_unicode.h, so that the pieces do
 * not depend on a regex library's Unicode version:
 *   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 *            | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   smollm:  every \p{N} alone, then GPT-2 on the text between.
 * \s is the White_Space property, which is what HF's regex engine
 * (Oniguruma) matches. Every character starts some alternative, so the
 * matches tile the text. */
enum { PRE_SMOLLM = 1, PRE_GPT2 = 2, PRE_LLAMA3 = 3 };

static const struct {
    const char *name;
    int kind;
} pre_names[] = {
    {"smollm", PRE_SMOLLM},   {"default", PRE_SMOLLM},   {"starcoder", PRE_SMOLLM},
    {"refact", PRE_SMOLLM},   {"gpt2", PRE_GPT2},        {"gpt-2", PRE_GPT2},
    {"llama-bpe", PRE_LLAMA3}, {"llama3", PRE_LLAMA3},   {"llama-v3", PRE_LLAMA3},
};

/* ---- the tokenizer ---------------------------------------------------------- */
#define DEAD_SYMBOL INT32_MIN
#define EMPTY_PAIR UINT64_MAX

struct mop_tokenizer {
    int32_t n_vocab;
    char *text;         /* every token's text, each followed by a NUL */
    size_t *text_off;   /* (n_vocab) */
    uint32_t *text_len; /* (n_vocab) */
    int32_t *type;      /* (n_vocab) MOP_TOKTYPE_* */
    int32_t byte_tok[256]; /* token of each byte's unicode stand-in, -1 if none */

    /* token text -> id: open addressing, id -1 = empty slot */
    struct str_slot {
        uint32_t hash, len; /* high hash bits and text length, to skip most compares */
        int32_t id;
    } *str_slot;
    uint64_t str_mask;
    /* (left id, right id) -> (rank, merged id) */
    struct pair_slot {
        uint64_t key; /* left << 32 | right; EMPTY_PAIR when free */
        int32_t rank, res;
    } *pair;
    uint64_t pair_mask;
    int32_t n_merges;

    int32_t *special; /* control and user-defined ids, longest text first */
    int32_t n_special;
    uint8_t special_first[256]; /* 1 if some special token starts with this byte */

    int32_t bos, eos, eot, pad, unk, add_bos;
    int32_t *eog; /* end-of-generation ids, ascending, no repeats */
    int32_t n_eog;
    int32_t pre_kind;
    char *chat_template;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    h ^= h >> 33; /* murmur3 finaliser: spread into the low bits the mask keeps */
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static uint64_t hash_pair(uint64_t key)
{
    key *= 0x9E3779B97F4A7C15ull;
    return key ^ (key >> 31);
}

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

static const char *tok_text(const mop_tokenizer *t, int32_t id)
{
    return t->text + t->text_off[id];
}

static int32_t str_lookup_h(const mop_tokenizer *t, const char *s, size_t n, uint64_t h)
{
    for (uint64_t i = h & t->str_mask;; i = (i + 1) & t->str_mask) {
        int32_t id = t->str_slot[i].id;
        if (id < 0)
            return -1;
        if (t->str_slot[i].hash == (uint32_t)(h >> 32) && t->str_slot[i].len == n &&
            memcmp(tok_text(t, id), s, n) == 0)
            return id;
    }
}

static int32_t str_lookup(const mop_tokenizer *t, const char *s, size_t n)
{
    return str_lookup_h(t, s, n, hash_bytes(s, n));
}

/* Returns the merge rank of (a, b) or -1; *res receives the merged id. */
static int32_t pair_lookup(const mop_tokenizer *t, int32_t a, int32_t b, int32_t *res)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint64_t i = hash_pair(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        if (t->pair[i].key == EMPTY_PAIR)
            return -1;
        if (t->pair[i].key == key) {
            *res = t->pair[i].res;
            return t->pair[i].rank;
        }
    }
}

/* ---- creation ------------------------------------------------------------- */
void mop_tokenizer_free(mop_tokenizer *t)
{
    if (!t)
        return;
    mop_free(t->text);
    mop_free(t->text_off);
    mop_free(t->text_len);
    mop_free(t->type);
    mop_free(t->str_slot);
    mop_free(t->pair);
    mop_free(t->special);
    mop_free(t->eog);
    mop_free(t->chat_template);
    mop_free(t);
}

static mop_status copy_vocab(mop_tokenizer *t, const mop_tokenizer_spec *sp)
{
    int32_t n = sp->n_tokens;
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (!sp->tokens[i].s && sp->tokens[i].len)
            return mop_fail(MOP_E_INVALID_ARG, "tokenizer: token %d has no text", i);
        if (sp->tokens[i].len > UINT32_MAX || !mop_add_ok(total, sp->tokens[i].len + 1, &total))
            return mop_fail(MOP_E_FORMAT, "tokenizer: token %d is too long", i);
    }
    t->text = mop_alloc(total ? total : 1);
    t->text_off = mop_alloc((size_t)n * sizeof *t->text_off);
    t->text_len = mop_alloc((size_t)n * sizeof *t->text_len);
    t->type = mop_alloc((size_t)n * sizeof *t->type);
    t->str_mask = pow2_at_least(2 * (uint64_t)n) - 1;
    t->str_slot = mop_alloc((t->str_mask + 1) * sizeof *t->str_slot);
    if (!t->text || !t->text_off || !t->text_len || !t->type || !t->str_slot)
        return mop_fail(MOP_E_NOMEM, "tokenizer: out of memory for %d tokens", n);
    memset(t->str_slot, 0xff, (t->str_mask + 1) * sizeof *t->str_slot);

    size_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t ty = sp->token_types ? sp->token_types[i] : MOP_TOKTYPE_NORMAL;
        if (ty < MOP_TOKTYPE_NORMAL || ty > MOP_TOKTYPE_BYTE)
            return mop_fail(MOP_E_FORMAT, "tokenizer: token %d has type %d (expected 1..6)", i, ty);
        size_t len = sp->tokens[i].len;
        if (len)
            memcpy(t->text + off, sp->tokens[i].s, len);
        t->text[off + len] = '\0';
        t->text_off[i] = off;
        t->text_len[i] = (uint32_t)len;
        t->type[i] = ty;
        off += len + 1;
        /* index by text; a duplicate text keeps its first id */
        uint64_t h = hash_bytes(tok_text(t, i), len);
        if (str_lookup_h(t, tok_text(t, i), len, h) >= 0)
            continue;
        uint64_t k = h & t->str_mask;
        while (t->str_slot[k].id >= 0)
            k = (k + 1) & t->str_mask;
        t->str_slot[k] = (struct str_slot){(uint32_t)(h >> 32), (uint32_t)len, i};
    }
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t ul = tok_utf8_put(u, tok_byte_to_cp((uint8_t)b));
        t->byte_tok[b] = str_lookup(t, u, ul);
    }
    return MOP_OK;
}

static mop_status build_merges(mop_tokenizer *t, const mop_tokenizer_spec *sp)
{
    int32_t n = sp->n_merges;
    t->n_merges = n;
    t->pair_mask = pow2_at_least(2 * (uint64_t)n) - 1;
    size_t slots = t->pair_mask + 1;
    t->pair = mop_alloc(slots * sizeof *t->pair);
    if (!t->pair)
        return mop_fail(MOP_E_NOMEM, "tokenizer: out of memory for %d merges", n);
    memset(t->pair, 0xff, slots * sizeof *t->pair);

    char stack[256];
    char *cat = stack;
    size_t cat_cap = sizeof stack;
    mop_status st = MOP_OK;
    for (int32_t r = 0; r < n && st == MOP_OK; r++) {
        const mop_tok_str *a = &sp->merges[2 * r], *b = &sp->merges[2 * r + 1];
        if ((!a->s && a->len) || (!b->s && b->len)) {
            st = mop_fail(MOP_E_INVALID_ARG, "tokenizer: merge %d has no text", r);
            break;
        }
        int32_t ia = str_lookup(t, a->s ? a->s : "", a->len);
        int32_t ib = str_lookup(t, b->s ? b->s : "", b->len);
        if (ia < 0 || ib < 0) {
            st = mop_fail(MOP_E_FORMAT, "tokenizer: merge %d \"%.*s %.*s\": %s is not a token", r,
                          (int)MOP_MIN(a->len, 64), a->s, (int)MOP_MIN(b->len, 64), b->s,
                          ia < 0 ? "left" : "right");
            break;
        }
        size_t len = a->len + b->len;
        if (len > cat_cap) {
            if (cat != stack)
                mop_free(cat);
            cat_cap = 2 * len;
            cat = mop_alloc(cat_cap);
            if (!cat) {
                cat = stack;
                st = mop_fail(MOP_E_NOMEM, "tokenizer: out of memory building merges");
                break;
            }
        }
        memcpy(cat, a->s, a->len);
        memcpy(cat + a->len, b->s, b->len);
        int32_t res = str_lookup(t, cat, len);
        if (res < 0) {
            st = mop_fail(MOP_E_FORMAT, "tokenizer: merge %d \"%.*s %.*s\": result is not a token",
                          r, (int)MOP_MIN(a->len, 64), a->s, (int)MOP_MIN(b->len, 64), b->s);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
        uint64_t h = hash_pair(key) & t->pair_mask;
        while (t->pair[h].key != EMPTY_PAIR && t->pair[h].key != key)
            h = (h + 1) & t->pair_mask;
        if (t->pair[h].key == key)
            continue; /* a repeated merge keeps its first (lowest) rank */
        t->pair[h] = (struct pair_slot){key, r, res};
    }
    if (cat != stack)
        mop_free(cat);
    return st;
}

static int cmp_special_len(const mop_tokenizer *t, int32_t a, int32_t b)
{
    return t->text_len[a] > t->text_len[b] || (t->text_len[a] == t->text_len[b] && a < b);
}

static mop_status build_specials(mop_tokenizer *t)
{
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        n += (t->type[i] == MOP_TOKTYPE_CONTROL || t->type[i] == MOP_TOKTYPE_USER_DEFINED) &&
             t->text_len[i] > 0 && tok_utf8_valid(tok_text(t, i), t->text_len[i], NULL);
    t->special = mop_alloc((size_t)MOP_MAX(n, 1) * sizeof *t->special);
    if (!t->special)
        return mop_fail(MOP_E_NOMEM, "tokenizer: out of memory for %d special tokens", n);
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (!((t->type[i] == MOP_TOKTYPE_CONTROL || t->type[i] == MOP_TOKTYPE_USER_DEFINED) &&
              t->text_len[i] > 0 && tok_utf8_valid(tok_text(t, i), t->text_len[i], NULL)))
            continue;
        /* insertion sort, longest first: there are few special tokens */
        int32_t j = t->n_special++;
        while (j > 0 && cmp_special_len(t, i, t->special[j - 1])) {
            t->special[j] = t->special[j - 1];
            j--;
        }
        t->special[j] = i;
        t->special_first[(uint8_t)tok_text(t, i)[0]] = 1;
    }
    return MOP_OK;
}

static mop_status check_id(const mop_tokenizer *t, const char *what, int32_t id)
{
    if (id < -1 || id >= t->n_vocab)
        return mop_fail(MOP_E_FORMAT, "tokenizer: %s token id %d out of range [0, %d)", what, id,
                        t->n_vocab);
    return MOP_OK;
}

/* Control (or user-defined) tokens that end generation by their text: the
 * end-of-turn / end-of-text markers of the chat and base templates of the
 * model families libmop reads, and the repository, file-separator and FIM
 * padding markers of code-trained vocabularies (a model that starts a new
 * document has finished its answer). The same tokens llama.cpp stops on, so
 * the two agree on where a generation ends. */
static const char *const eog_texts[] = {
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
    "<|end_of_text|>", "<EOT>", "<|repo_name|>", "<reponame>", "<|file_sep|>", "<|fim_pad|>",
};

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The end-of-generation set: eos, eot (after its fallback), the file's extra
 * ids, and the control tokens of eog_texts; sorted, repeats dropped. */
static mop_status build_eog(mop_tokenizer *t, const mop_tokenizer_spec *sp)
{
    if (sp->n_eog_extra < 0 || sp->n_eog_extra > (int32_t)(sizeof sp->eog_extra / sizeof sp->eog_extra[0]))
        return mop_fail(MOP_E_INVALID_ARG, "tokenizer: %d extra end-of-generation ids", sp->n_eog_extra);
    size_t cap = 2 + (size_t)sp->n_eog_extra + sizeof eog_texts / sizeof eog_texts[0];
    t->eog = mop_alloc(cap * sizeof *t->eog);
    if (!t->eog)
        return mop_fail(MOP_E_NOMEM, "tokenizer: out of memory for the end-of-generation set");
    int32_t n = 0;
    if (t->eos >= 0)
        t->eog[n++] = t->eos;
    if (t->eot >= 0)
        t->eog[n++] = t->eot;
    for (int32_t i = 0; i < sp->n_eog_extra; i++) {
        MOP_TRY(check_id(t, "end-of-generation", sp->eog_extra[i]));
        if (sp->eog_extra[i] >= 0)
            t->eog[n++] = sp->eog_extra[i];
    }
    for (size_t i = 0; i < sizeof eog_texts / sizeof eog_texts[0]; i++) {
        int32_t id = str_lookup(t, eog_texts[i], strlen(eog_texts[i]));
        if (id >= 0 && (t->type[id] == MOP_TOKTYPE_CONTROL || t->type[id] == MOP_TOKTYPE_USER_DEFINED))
            t->eog[n++] = id;
    }
    qsort(t->eog, (size_t)n, sizeof *t->eog, cmp_i32);
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++)
        if (k == 0 || t->eog[k - 1] != t->eog[i])
            t->eog[k++] = t->eog[i];
    t->n_eog = k;
    return MOP_OK;
}

static mop_status create_inner(mop_tokenizer *t, const mop_tokenizer_spec *sp)
{
    if (sp->n_tokens <= 0 || !sp->tokens)
        return mop_fail(MOP_E_FORMAT, "tokenizer: empty vocabulary");
    if (sp->n_merges < 0 || (sp->n_merges > 0 && !sp->merges))
        return mop_fail(MOP_E_INVALID_ARG, "tokenizer: %d merges without data", sp->n_merges);
    t->n_vocab = sp->n_tokens;

    const char *pre = sp->pre.s ? sp->pre.s : "default";
    size_t pre_len = sp->pre.s ? sp->pre.len : strlen("default");
    for (size_t i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++)
        if (strlen(pre_names[i].name) == pre_len && memcmp(pre_names[i].name, pre, pre_len) == 0)
            t->pre_kind = pre_names[i].kind;
    if (!t->pre_kind)
        return mop_fail(MOP_E_UNSUPPORTED,
                        "tokenizer: pre-tokenizer \"%.*s\" not supported (known: smollm, gpt2, "
                        "llama-bpe, default)",
                        (int)MOP_MIN(pre_len, 64), pre);

    MOP_TRY(copy_vocab(t, sp));
    MOP_TRY(build_merges(t, sp));
    MOP_TRY(build_specials(t));

    MOP_TRY(check_id(t, "bos", sp->bos));
    MOP_TRY(check_id(t, "eos", sp->eos));
    MOP_TRY(check_id(t, "eot", sp->eot));
    MOP_TRY(check_id(t, "padding", sp->pad));
    MOP_TRY(check_id(t, "unknown", sp->unk));
    t->bos = sp->bos;
    t->eos = sp->eos;
    t->pad = sp->pad;
    t->unk = sp->unk;
    t->add_bos = sp->add_bos != 0;
    t->eot = sp->eot;
    if (t->eot < 0) /* chat models: the end-of-turn marker when the file names none */
        t->eot = str_lookup(t, "<|im_end|>", 10);
    if (t->eot < 0)
        t->eot = str_lookup(t, "<|eot_id|>", 10);
    MOP_TRY(build_eog(t, sp));

    if (sp->chat_template.s) {
        t->chat_template = mop_alloc(sp->chat_template.len + 1);
        if (!t->chat_template)
            return mop_fail(MOP_E_NOMEM, "tokenizer: out of memory for the chat template");
        memcpy(t->chat_template, sp->chat_template.s, sp->chat_template.len);
        t->chat_template[sp->chat_template.len] = '\0';
    }

    return MOP_OK;
}

mop_status mop_tokenizer_create(const mop_tokenizer_spec *spec, mop_tokenizer **out)
{
    MOP_CHECK_ARG(spec && out);
    mop_tokenizer *t = mop_calloc(1, sizeof *t);
    if (!t)
        return mop_fail(MOP_E_NOMEM, "tokenizer: out of memory");
    mop_status st = create_inner(t, spec);
    if (st != MOP_OK) {
        mop_tokenizer_free(t);
        return st;
    }
    *out = t;
    return MOP_OK;
}

int32_t mop_tokenizer_n_vocab(const mop_tokenizer *t)
{
    return t ? t->n_vocab : 0;
}

const char *mop_tokenizer_chat_template(const mop_tokenizer *t)
{
    return t ? t->chat_template : NULL;
}

const int32_t *mop_tokenizer_eog(const mop_tokenizer *t, int32_t *n)
{
    *n = t ? t->n_eog : 0;
    return t ? t->eog : NULL;
}

int32_t mop_tokenizer_is_eog(const mop_tokenizer *t, int32_t token)
{
    if (!t || token < 0)
        return 0;
    for (int32_t i = 0; i < t->n_eog && t->eog[i] <= token; i++)
        if (t->eog[i] == token)
            return 1;
    return 0;
}

int32_t mop_tokenizer_special(const mop_tokenizer *t, int32_t which)
{
    if (!t)
        return -1;
    switch (which) {
    case MOP_TOKEN_BOS: return t->bos;
    case MOP_TOKEN_EOS: return t->eos;
    case MOP_TOKEN_EOT: return t->eot >= 0 ? t->eot : t->eos;
    case MOP_TOKEN_PAD: return t->pad;
    default: return -1;
    }
}

/* ---- encoding ------------------------------------------------------------- */
typedef struct bpe_merge {
    int32_t rank, pos; /* ordered by (rank, pos): lowest rank, then leftmost */
    int32_t left, right, res;
} bpe_merge;

/* Per-call state, so a shared tokenizer serves many threads. */
typedef struct encoder {
    const mop_tokenizer *t;
    int32_t *sym, *prev, *next; /* the piece's symbols as a linked list */
    size_t sym_cap;
    bpe_merge *heap;
    size_t heap_n, heap_cap;
    char *mapped; /* the piece in byte-to-unicode form (llama3 whole-word lookup) */
    size_t mapped_cap;
    int32_t *out;
    size_t out_cap, n_out;
} encoder;

static void emit(encoder *e, int32_t id)
{
    if (e->n_out < e->out_cap)
        e->out[e->n_out] = id;
    e->n_out++;
}

static int merge_before(const bpe_merge *a, const bpe_merge *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(encoder *e, bpe_merge m)
{
    size_t i = e->heap_n++;
    while (i > 0 && merge_before(&m, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = m;
}

static bpe_merge heap_pop(encoder *e)
{
    bpe_merge top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && merge_before(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!merge_before(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n)
        e->heap[i] = last;
    return top;
}

/* Queue the merge of symbol i with its right neighbour, if that pair has a rank. */
static void push_pair(encoder *e, int32_t i)
{
    int32_t j = e->next[i];
    if (j < 0 || e->sym[i] < 0 || e->sym[j] < 0)
        return;
    int32_t res;
    int32_t rank = pair_lookup(e->t, e->sym[i], e->sym[j], &res);
    if (rank >= 0)
        heap_push(e, (bpe_merge){rank, i, e->sym[i], e->sym[j], res});
}

static mop_status encoder_reserve(encoder *e, size_t n)
{
    if (n <= e->sym_cap)
        return MOP_OK;
    size_t cap = MOP_MAX(n, 2 * e->sym_cap);
    mop_free(e->sym);
    mop_free(e->prev);
    mop_free(e->next);
    mop_free(e->heap);
    mop_free(e->mapped);
    e->sym_cap = cap;
    e->sym = mop_alloc(cap * sizeof *e->sym);
    e->prev = mop_alloc(cap * sizeof *e->prev);
    e->next = mop_alloc(cap * sizeof *e->next);
    e->heap_cap = 3 * cap; /* n-1 initial pairs + at most 2 per merge */
    e->heap = mop_alloc(e->heap_cap * sizeof *e->heap);
    e->mapped_cap = 2 * cap;
    e->mapped = mop_alloc(e->mapped_cap);
    if (!e->sym || !e->prev || !e->next || !e->heap || !e->mapped) {
        e->sym_cap = 0;
        return mop_fail(MOP_E_NOMEM, "tokenize: out of memory for a %zu-byte piece", n);
    }
    return MOP_OK;
}

/* bpe(piece): tokens of one pre-tokenized piece. */
static mop_status bpe_piece(encoder *e, const uint8_t *p, size_t n)
{
    const mop_tokenizer *t = e->t;
    if (n == 0)
        return MOP_OK;
    if (n > INT32_MAX)
        return mop_fail(MOP_E_RANGE, "tokenize: a piece of %zu bytes is too long", n);
    MOP_TRY(encoder_reserve(e, n));
    if (t->pre_kind == PRE_LLAMA3) { /* Llama 3 ignores merges for whole-word tokens */
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            m += tok_utf8_put(e->mapped + m, tok_byte_to_cp(p[i]));
        int32_t id = str_lookup(t, e->mapped, m);
        if (id >= 0) {
            emit(e, id);
            return MOP_OK;
        }
    }
    int32_t len = (int32_t)n;
    for (int32_t i = 0; i < len; i++) {
        e->sym[i] = t->byte_tok[p[i]]; /* -1: a byte the vocab lacks */
        e->prev[i] = i - 1;
        e->next[i] = i + 1 < len ? i + 1 : -1;
    }
    e->heap_n = 0;
    for (int32_t i = 0; i + 1 < len; i++)
        push_pair(e, i);
    while (e->heap_n) {
        bpe_merge m = heap_pop(e);
        int32_t i = m.pos, j = e->next[i];
        if (e->sym[i] != m.left || j < 0 || e->sym[j] != m.right)
            continue; /* stale: one side was merged since */
        e->sym[i] = m.res;
        e->sym[j] = DEAD_SYMBOL;
        e->next[i] = e->next[j];
        if (e->next[j] >= 0)
            e->prev[e->next[j]] = i;
        if (e->prev[i] >= 0)
            push_pair(e, e->prev[i]);
        push_pair(e, i);
    }
    for (int32_t i = 0; i >= 0; i = e->next[i]) {
        if (e->sym[i] >= 0)
            emit(e, e->sym[i]);
        else if (t->unk >= 0 && t->type[t->unk] == MOP_TOKTYPE_UNKNOWN)
            emit(e, t->unk); /* else dropped: no stand-in for the byte (as HF, llama.cpp) */
    }
    return MOP_OK;
}

/* ---- the pre-tokenizer scanners ------------------------------------------
 * The text is valid UTF-8 (checked on entry), so decoding needs no checks. */
typedef struct tchar {
    uint32_t cp;
    int cls;  /* TOK_CLS_* */
    size_t len; /* bytes, 0 past the end */
} tchar;

static inline tchar char_at(const uint8_t *s, size_t n, size_t i)
{
    tchar c = {0, TOK_CLS_OTHER, 0};
    if (i >= n)
        return c;
    uint8_t b = s[i];
    if (b < 0x80) {
        c.cp = b, c.len = 1;
        c.cls = tok_ascii_class[b];
        return c;
    }
    if (b < 0xE0)
        c.cp = (uint32_t)(b & 0x1F) << 6 | (s[i + 1] & 0x3Fu), c.len = 2;
    else if (b < 0xF0)
        c.cp = (uint32_t)(b & 0x0F) << 12 | (s[i + 1] & 0x3Fu) << 6 | (s[i + 2] & 0x3Fu), c.len = 3;
    else
        c.cp = (uint32_t)(b & 0x07) << 18 | (s[i + 1] & 0x3Fu) << 12 | (s[i + 2] & 0x3Fu) << 6 |
               (s[i + 3] & 0x3Fu),
        c.len = 4;
    c.cls = tok_cp_class(c.cp);
    return c;
}

/* End of the run of class cls that starts at i; *last = start of its last
 * character (i if the run is empty). */
static size_t run_end(const uint8_t *s, size_t n, size_t i, int cls, size_t *last)
{
    size_t l = i;
    for (;;) {
        tchar c = char_at(s, n, i);
        if (!c.len || c.cls != cls)
            break;
        l = i;
        i += c.len;
    }
    if (last)
        *last = l;
    return i;
}

/* 's 't 're 've 'm 'll 'd at i: the length matched, or 0. Caseless for Llama 3
 * (where PCRE2's and Oniguruma's caseless 's' also takes U+017F LONG S). */
static size_t contraction(const uint8_t *s, size_t n, size_t i, int caseless)
{
    if (s[i] != '\'' || i + 1 >= n)
        return 0;
    uint8_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (caseless) {
        if (a == 0xC5 && b == 0xBF) /* U+017F folds to s */
            return 3;
        a = (uint8_t)(a | (a >= 'A' && a <= 'Z' ? 0x20 : 0));
        b = (uint8_t)(b | (b >= 'A' && b <= 'Z' ? 0x20 : 0));
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* \s+(?!\S)|\s+ for the whitespace run at i: the run, less its last
 * character when something other than whitespace follows it. */
static size_t ws_tail(const uint8_t *s, size_t n, size_t i)
{
    size_t last, end = run_end(s, n, i, TOK_CLS_WS, &last);
    return end < n && last > i ? last : end;
}

/* End of the GPT-2 regex match at i (< n). */
static size_t scan_gpt2(const uint8_t *s, size_t n, size_t i)
{
    size_t k = contraction(s, n, i, 0);
    if (k)
        return i + k;
    tchar c = char_at(s, n, i);
    if (c.cp == ' ') { /* ' ?X+' for X in L, N, other */
        tchar d = char_at(s, n, i + 1);
        if (d.len && d.cls != TOK_CLS_WS)
            return run_end(s, n, i + 1, d.cls, NULL);
    }
    if (c.cls != TOK_CLS_WS)
        return run_end(s, n, i, c.cls, NULL);
    return ws_tail(s, n, i);
}

/* End of the Llama 3 regex match at i (< n). */
static size_t scan_llama3(const uint8_t *s, size_t n, size_t i)
{
    size_t k = contraction(s, n, i, 1);
    if (k)
        return i + k;
    tchar c = char_at(s, n, i);
    if (c.cls == TOK_CLS_L)
        return run_end(s, n, i, TOK_CLS_L, NULL);
    if (c.cls == TOK_CLS_N) { /* \p{N}{1,3} */
        size_t j = i + c.len;
        for (int m = 1; m < 3; m++) {
            tchar d = char_at(s, n, j);
            if (!d.len || d.cls != TOK_CLS_N)
                break;
            j += d.len;
        }
        return j;
    }
    tchar d = char_at(s, n, i + c.len);
    if (c.cp != '\r' && c.cp != '\n' && d.len && d.cls == TOK_CLS_L) /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        return run_end(s, n, i + c.len, TOK_CLS_L, NULL);
    size_t j = c.cls == TOK_CLS_OTHER ? i : c.cp == ' ' && d.len && d.cls == TOK_CLS_OTHER ? i + 1
                                                                                      : n + 1;
    if (j <= n) { /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
        j = run_end(s, n, j, TOK_CLS_OTHER, NULL);
        while (j < n && (s[j] == '\r' || s[j] == '\n'))
            j++;
        return j;
    }
    /* c is whitespace: \s*[\r\n]+ ends after the run's last CR or LF */
    size_t end = run_end(s, n, i, TOK_CLS_WS, NULL), crlf = 0;
    for (size_t q = i; q < end; q++)
        if (s[q] == '\r' || s[q] == '\n')
            crlf = q + 1;
    if (crlf)
        return crlf;
    return ws_tail(s, n, i);
}

static mop_status piece_bpe(encoder *e, const char *s, size_t n)
{
    return bpe_piece(e, (const uint8_t *)s, n);
}

/* Split s[0, n) with the pre-tokenizer's regex; each match is a piece. */
static mop_status split_pieces(encoder *e, const char *str, size_t n)
{
    const uint8_t *s = (const uint8_t *)str;
    int llama3 = e->t->pre_kind == PRE_LLAMA3;
    for (size_t i = 0; i < n;) {
        size_t j = llama3 ? scan_llama3(s, n, i) : scan_gpt2(s, n, i);
        MOP_TRY(bpe_piece(e, s + i, j - i));
        i = j;
    }
    return MOP_OK;
}

/* Text between special tokens. */
static mop_status encode_span(encoder *e, const char *s, size_t n)
{
    if (n == 0)
        return MOP_OK;
    if (e->t->pre_kind != PRE_SMOLLM)
        return split_pieces(e, s, n);
    /* smollm: every \p{N} character is a piece, the GPT-2 regex between them */
    size_t gap = 0;
    for (size_t i = 0; i < n;) {
        tchar c = char_at((const uint8_t *)s, n, i);
        if (c.cls == TOK_CLS_N) {
            MOP_TRY(split_pieces(e, s + gap, i - gap));
            MOP_TRY(piece_bpe(e, s + i, c.len));
            gap = i + c.len;
        }
        i += c.len;
    }
    return split_pieces(e, s + gap, n - gap);
}

/* The longest special token at s, or -1. Control tokens only when asked. */
static int32_t match_special(const mop_tokenizer *t, const char *s, size_t n, int32_t flags)
{
    for (int32_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (t->type[id] == MOP_TOKTYPE_CONTROL && !(flags & MOP_TOKENIZE_PARSE_SPECIAL))
            continue;
        if (t->text_len[id] <= n && memcmp(s, tok_text(t, id), t->text_len[id]) == 0)
            return id;
    }
    return -1;
}

static mop_status encode_all(encoder *e, const char *text, size_t len, int32_t flags)
{
    const mop_tokenizer *t = e->t;
    if ((flags & MOP_TOKENIZE_ADD_BOS) && t->add_bos && t->bos >= 0)
        emit(e, t->bos);
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        int32_t id = t->special_first[(uint8_t)text[i]] ? match_special(t, text + i, len - i, flags)
                                                          : -1;
        if (id < 0) {
            i++;
            continue;
        }
        MOP_TRY(encode_span(e, text + start, i - start));
        emit(e, id);
        i += t->text_len[id];
        start = i;
    }
    return encode_span(e, text + start, len - start);
}

mop_status mop_tokenizer_encode(const mop_tokenizer *t, const char *text, size_t len,
                                int32_t flags, int32_t *tokens, size_t cap, size_t *n_out)
{
    MOP_CHECK_ARG(t && n_out);
    MOP_CHECK_ARG(text || len == 0);
    MOP_CHECK_ARG(tokens || cap == 0);
    if (flags & ~(MOP_TOKENIZE_ADD_BOS | MOP_TOKENIZE_PARSE_SPECIAL))
        return mop_fail(MOP_E_INVALID_ARG, "tokenize: unknown flags 0x%x", (unsigned)flags);
    size_t bad;
    if (!tok_utf8_valid(text, len, &bad))
        return mop_fail(MOP_E_INVALID_ARG, "tokenize: text is not valid UTF-8 at byte %zu", bad);

    encoder e = {.t = t, .out = tokens, .out_cap = cap};
    mop_status st = encode_all(&e, text ? text : "", len, flags);
    mop_free(e.sym);
    mop_free(e.prev);
    mop_free(e.next);
    mop_free(e.heap);
    mop_free(e.mapped);
    if (st != MOP_OK)
        return st;
    *n_out = e.n_out;
    if (e.n_out > cap)
        return mop_fail(MOP_E_RANGE, "tokenize: the text needs %zu tokens, capacity is %zu",
                        e.n_out, cap);
    return MOP_OK;
}

/* ---- decoding ------------------------------------------------------------- */
static void put_bytes(char *buf, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n < cap)
        memcpy(buf + *n, s, MOP_MIN(len, cap - *n));
    *n += len;
}

mop_status mop_tokenizer_decode(const mop_tokenizer *t, const int32_t *tokens, size_t n_tokens,
                                int32_t flags, char *buf, size_t cap, size_t *n_out)
{
    MOP_CHECK_ARG(t && n_out);
    MOP_CHECK_ARG(tokens || n_tokens == 0);
    MOP_CHECK_ARG(buf || cap == 0);
    if (flags & ~(MOP_TOKENIZE_ADD_BOS | MOP_TOKENIZE_PARSE_SPECIAL))
        return mop_fail(MOP_E_INVALID_ARG, "detokenize: unknown flags 0x%x", (unsigned)flags);
    for (size_t k = 0; k < n_tokens; k++)
        if (tokens[k] < 0 || tokens[k] >= t->n_vocab)
            return mop_fail(MOP_E_INVALID_ARG, "detokenize: token %d at index %zu out of range [0, %d)",
                            tokens[k], k, t->n_vocab);
    size_t n = 0;
    for (size_t k = 0; k < n_tokens; k++) {
        int32_t id = tokens[k], ty = t->type[id];
        const char *s = tok_text(t, id);
        size_t len = t->text_len[id];
        if (ty == MOP_TOKTYPE_CONTROL || ty == MOP_TOKTYPE_UNKNOWN) {
            if (flags & MOP_TOKENIZE_PARSE_SPECIAL)
                put_bytes(buf, cap, &n, s, len);
            continue;
        }
        if (ty == MOP_TOKTYPE_USER_DEFINED) {
            put_bytes(buf, cap, &n, s, len);
            continue;
        }
        /* inverse byte map; characters outside the map pass through as UTF-8 */
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            size_t cl = tok_utf8_get(s + i, len - i, &cp);
            int b = cl ? tok_cp_to_byte(cp) : -1;
            if (!cl)
                cl = 1;
            if (b >= 0) {
                char c = (char)b;
                put_bytes(buf, cap, &n, &c, 1);
            } else {
                put_bytes(buf, cap, &n, s + i, cl);
            }
            i += cl;
        }
    }
    *n_out = n;
    if (n < cap)
        buf[n] = '\0';
    if (n > cap)
        return mop_fail(MOP_E_RANGE, "detokenize: the text needs %zu bytes, capacity is %zu", n,
                        cap);
    return MOP_OK;
}

/* ---- public API ------------------------------------------------------------ */
static mop_status model_tok(const mop_model *model, const char *fn, const mop_tokenizer **t)
{
    if (!model)
        return mop_fail(MOP_E_INVALID_ARG, "%s: model is NULL", fn);
    if (!model->tok)
        return mop_fail(MOP_E_UNSUPPORTED, "%s: model has no tokenizer", fn);
    *t = model->tok;
    return MOP_OK;
}

int32_t mop_model_special_token(const mop_model *model, int32_t which)
{
    return model ? mop_tokenizer_special(model->tok, which) : -1;
}

mop_status mop_model_eog_tokens(const mop_model *model, int32_t *tokens, size_t cap, size_t *n_out)
{
    MOP_CHECK_ARG(model != NULL);
    MOP_CHECK_ARG(n_out != NULL);
    MOP_CHECK_ARG(tokens != NULL || cap == 0);
    int32_t n = 0;
    const int32_t *eog = mop_tokenizer_eog(model->tok, &n);
    *n_out = (size_t)n;
    if ((size_t)n > cap)
        return mop_fail(MOP_E_RANGE, "mop_model_eog_tokens: %d end-of-generation tokens, capacity "
                        "is %zu", (int)n, cap);
    if (n)
        memcpy(tokens, eog, (size_t)n * sizeof *tokens);
    return MOP_OK;
}

int32_t mop_model_is_eog(const mop_model *model, int32_t token)
{
    return model ? mop_tokenizer_is_eog(model->tok, token) : 0;
}

mop_status mop_tokenize(const mop_model *model, const char *text, size_t len, int32_t flags,
                        int32_t *tokens, size_t cap, size_t *n_out)
{
    const mop_tokenizer *t = NULL;
    MOP_TRY(model_tok(model, "mop_tokenize", &t));
    return mop_tokenizer_encode(t, text, len, flags, tokens, cap, n_out);
}

mop_status mop_detokenize(const mop_model *model, const int32_t *tokens, size_t n_tokens,
                          int32_t flags, char *buf, size_t cap, size_t *n_out)
{
    const mop_tokenizer *t = NULL;
    MOP_TRY(model_tok(model, "mop_detokenize", &t));
    return mop_tokenizer_decode(t, tokens, n_tokens, flags, buf, cap, n_out);
}
