/* Byte-level BPE tokenizer and ChatML rendering on a hand-made vocabulary.
 * Expected token sequences are worked out by hand from the merge ranks.
 * (The comparison against Hugging Face tokenizers on the real SmolLM2 vocab
 * is tests/python/test_tokenizer.py.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

#include <cmocka.h>

#include "model.h"
#include "tokenizer.h"
#include "tokenizer_unicode.h"
#include "tokenizer_util.h"

/* ---- the test vocabulary ----------------------------------------------------
 * 0 <|endoftext|> (control, also unk)  1 <|im_start|>  2 <|im_end|> (control)
 * 3 <x>  4 <x>y (user-defined)
 * then one token per byte (its GPT-2 stand-in), except `omit_byte` if >= 0,
 * then the merged tokens below, "abc" (reachable by no merge) and <unk>. */
enum { N_SPECIAL = 5 };
static const char *const MERGES[][2] = {
    {"b", "c"},  {"a", "b"},   {"a", "a"},   {"h", "e"},     {"l", "l"},    {"he", "ll"},
    {"hell", "o"}, {"Ġ", "w"}, {"o", "r"},   {"Ġw", "or"},   {"l", "d"},    {"Ġwor", "ld"},
};
enum { N_MERGES = sizeof MERGES / sizeof MERGES[0] };

typedef struct vocab {
    char byte_text[256][4];
    mop_tok_str tokens[N_SPECIAL + 256 + N_MERGES + 2];
    int32_t types[N_SPECIAL + 256 + N_MERGES + 2];
    char merged[N_MERGES][16];
    mop_tok_str merges[2 * N_MERGES];
    int32_t n_tokens;
    int32_t byte_id[256];
} vocab;

static void tok_set(vocab *v, const char *s, int32_t type)
{
    v->tokens[v->n_tokens] = (mop_tok_str){s, strlen(s)};
    v->types[v->n_tokens++] = type;
}

static mop_tokenizer_spec make_spec(vocab *v, int omit_byte, const char *pre)
{
    memset(v, 0, sizeof *v);
    tok_set(v, "<|endoftext|>", MOP_TOKTYPE_CONTROL);
    tok_set(v, "<|im_start|>", MOP_TOKTYPE_CONTROL);
    tok_set(v, "<|im_end|>", MOP_TOKTYPE_CONTROL);
    tok_set(v, "<x>", MOP_TOKTYPE_USER_DEFINED);
    tok_set(v, "<x>y", MOP_TOKTYPE_USER_DEFINED);
    for (int b = 0; b < 256; b++) {
        v->byte_id[b] = -1;
        if (b == omit_byte)
            continue;
        tok_utf8_put(v->byte_text[b], tok_byte_to_cp((uint8_t)b));
        v->byte_id[b] = v->n_tokens;
        tok_set(v, v->byte_text[b], MOP_TOKTYPE_NORMAL);
    }
    for (int r = 0; r < N_MERGES; r++) {
        snprintf(v->merged[r], sizeof v->merged[r], "%s%s", MERGES[r][0], MERGES[r][1]);
        tok_set(v, v->merged[r], MOP_TOKTYPE_NORMAL);
        v->merges[2 * r] = (mop_tok_str){MERGES[r][0], strlen(MERGES[r][0])};
        v->merges[2 * r + 1] = (mop_tok_str){MERGES[r][1], strlen(MERGES[r][1])};
    }
    tok_set(v, "abc", MOP_TOKTYPE_NORMAL);
    tok_set(v, "<unk>", MOP_TOKTYPE_UNKNOWN);
    return (mop_tokenizer_spec){
        .pre = {pre, strlen(pre)}, .n_tokens = v->n_tokens, .tokens = v->tokens,
        .token_types = v->types, .n_merges = N_MERGES, .merges = v->merges,
        .bos = 1, .eos = 2, .eot = -1, .pad = -1, .unk = v->n_tokens - 1, .add_bos = 1,
    };
}

static int32_t merged_id(const vocab *v, const char *s)
{
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (v->tokens[i].len == strlen(s) && memcmp(v->tokens[i].s, s, v->tokens[i].len) == 0)
            return i;
    fail_msg("no token %s", s);
    return -1;
}

static vocab V;
static mop_tokenizer *T;

static int setup(void **state)
{
    (void)state;
    mop_tokenizer_spec sp = make_spec(&V, -1, "smollm");
    return mop_tokenizer_create(&sp, &T) == MOP_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    mop_tokenizer_free(T);
    T = NULL;
    return 0;
}

/* encode s and compare with the expected ids */
static void expect_tokens(const mop_tokenizer *t, const char *s, int32_t flags,
                          const int32_t *want, size_t n_want)
{
    int32_t got[256];
    size_t n = 0;
    mop_status st = mop_tokenizer_encode(t, s, strlen(s), flags, got, 256, &n);
    assert_int_equal(st, MOP_OK);
    assert_int_equal(n, n_want);
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("\"%s\": token %zu is %d, expected %d", s, i, got[i], want[i]);
}
#define EXPECT(t, s, flags, ...)                                                               \
    do {                                                                                       \
        const int32_t want_[] = {__VA_ARGS__};                                                 \
        expect_tokens(t, s, flags, want_, sizeof want_ / sizeof want_[0]);                     \
    } while (0)

static void test_merges_follow_rank_then_position(void **state)
{
    (void)state;
    const int32_t *b = V.byte_id;
    /* "b c" (rank 0) beats "a b" (rank 1): a|bc, and "abc" (no merge reaches it) is unused */
    EXPECT(T, "abc", 0, b['a'], merged_id(&V, "bc"));
    EXPECT(T, "ab", 0, merged_id(&V, "ab"));
    /* equal rank: leftmost first */
    EXPECT(T, "aaa", 0, merged_id(&V, "aa"), b['a']);
    EXPECT(T, "aaaa", 0, merged_id(&V, "aa"), merged_id(&V, "aa"));
    /* chains of merges, and the space as its stand-in Ġ joined to the word */
    EXPECT(T, "hello world", 0, merged_id(&V, "hello"), merged_id(&V, "Ġworld"));
    EXPECT(T, "helloworld", 0, merged_id(&V, "hello"), b['w'], merged_id(&V, "or"),
           merged_id(&V, "ld"));
}

static void test_pre_tokenizer_splits(void **state)
{
    (void)state;
    const int32_t *b = V.byte_id;
    /* smollm: every digit alone, so " 12" is " ", "1", "2" */
    EXPECT(T, "a 12", 0, b['a'], b[' '], b['1'], b['2']);
    /* GPT-2 regex: contraction, trailing whitespace run kept apart from the word */
    EXPECT(T, "a's", 0, b['a'], b['\''], b['s']);
    EXPECT(T, "ab  ab", 0, merged_id(&V, "ab"), b[' '], b[' '], merged_id(&V, "ab"));
    /* llama-bpe ignores merges when the whole word is a token */
    mop_tokenizer *t3;
    vocab v3;
    mop_tokenizer_spec sp = make_spec(&v3, -1, "llama-bpe");
    assert_int_equal(mop_tokenizer_create(&sp, &t3), MOP_OK);
    EXPECT(t3, "abc", 0, merged_id(&v3, "abc"));
    /* llama3 groups up to three digits */
    EXPECT(t3, "1234", 0, v3.byte_id['1'], v3.byte_id['2'], v3.byte_id['3'], v3.byte_id['4']);
    mop_tokenizer_free(t3);
}

/* The pre-tokenizer's own Unicode table (not the regex library's). */
static void test_unicode_classes(void **state)
{
    (void)state;
    assert_string_equal(tok_unicode_version, "15.0.0");
    assert_int_equal(tok_cp_class('a'), TOK_CLS_L);
    assert_int_equal(tok_cp_class('7'), TOK_CLS_N);
    assert_int_equal(tok_cp_class('\n'), TOK_CLS_WS);
    assert_int_equal(tok_cp_class('\''), TOK_CLS_OTHER);
    assert_int_equal(tok_cp_class(0x85), TOK_CLS_WS);     /* NEL: White_Space */
    assert_int_equal(tok_cp_class(0x180E), TOK_CLS_OTHER); /* not White_Space since 6.3 */
    assert_int_equal(tok_cp_class(0x3000), TOK_CLS_WS);
    assert_int_equal(tok_cp_class(0xE9), TOK_CLS_L);
    assert_int_equal(tok_cp_class(0xBD), TOK_CLS_N);       /* No */
    assert_int_equal(tok_cp_class(0x2167), TOK_CLS_N);     /* Nl */
    assert_int_equal(tok_cp_class(0x301), TOK_CLS_OTHER);  /* Mn */
    assert_int_equal(tok_cp_class(0x378), TOK_CLS_OTHER);  /* unassigned */
    assert_int_equal(tok_cp_class(0x4E00), TOK_CLS_L);     /* CJK range */
    assert_int_equal(tok_cp_class(0x9FFF), TOK_CLS_L);
    assert_int_equal(tok_cp_class(0x1E4F0), TOK_CLS_N);    /* new in 15.0 */
    assert_int_equal(tok_cp_class(0x11F50), TOK_CLS_N);
    assert_int_equal(tok_cp_class(0x11F04), TOK_CLS_L);
    assert_int_equal(tok_cp_class(0x31350), TOK_CLS_L);    /* CJK Ext H */
    assert_int_equal(tok_cp_class(0x2EBF0), TOK_CLS_OTHER); /* CJK Ext I: 15.1 */
    assert_int_equal(tok_cp_class(0x10FFFF), TOK_CLS_OTHER);
    for (uint32_t i = 1; i < tok_n_class_ranges; i++)
        assert_true(tok_class_ranges[i - 1].hi < tok_class_ranges[i].lo);
}

static void test_unknown_bytes_fall_back(void **state)
{
    (void)state;
    vocab v;
    mop_tokenizer *t;
    /* "é" is C3 A9; the vocab lacks byte C3 -> <unk>, then the A9 token */
    mop_tokenizer_spec sp = make_spec(&v, 0xC3, "smollm");
    int32_t unk = sp.unk;
    assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_OK);
    EXPECT(t, "\xC3\xA9", 0, unk, v.byte_id[0xA9]);
    char out[8];
    size_t n;
    const int32_t ids[] = {unk, v.byte_id[0xA9]};
    assert_int_equal(mop_tokenizer_decode(t, ids, 2, 0, out, sizeof out, &n), MOP_OK);
    assert_int_equal(n, 1); /* <unk> is not rendered without the flag */
    mop_tokenizer_free(t);
    /* without an unk token, or with a control token as unk, the byte is dropped */
    for (int k = 0; k < 2; k++) {
        sp.unk = k == 0 ? -1 : 0;
        assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_OK);
        EXPECT(t, "a\xC3\xA9", 0, v.byte_id['a'], v.byte_id[0xA9]);
        mop_tokenizer_free(t);
    }
}

static void test_special_tokens(void **state)
{
    (void)state;
    const int32_t *b = V.byte_id;
    const char *s = "<|im_start|>ab<|im_end|>";
    EXPECT(T, s, MOP_TOKENIZE_PARSE_SPECIAL, 1, merged_id(&V, "ab"), 2);
    /* without the flag control tokens are plain text */
    int32_t ids[64];
    size_t n;
    assert_int_equal(mop_tokenizer_encode(T, s, strlen(s), 0, ids, 64, &n), MOP_OK);
    assert_true(n > 3);
    for (size_t i = 0; i < n; i++)
        assert_true(ids[i] != 1 && ids[i] != 2);
    /* user-defined tokens always split, longest match first */
    EXPECT(T, "a<x>yb<x>", 0, b['a'], 4, b['b'], 3);
    /* BOS only when asked and the model wants it */
    EXPECT(T, "ab", MOP_TOKENIZE_ADD_BOS, 1, merged_id(&V, "ab"));
    /* special ids; EOT falls back to the id of <|im_end|> */
    assert_int_equal(mop_tokenizer_special(T, MOP_TOKEN_BOS), 1);
    assert_int_equal(mop_tokenizer_special(T, MOP_TOKEN_EOS), 2);
    assert_int_equal(mop_tokenizer_special(T, MOP_TOKEN_EOT), 2);
    assert_int_equal(mop_tokenizer_special(T, MOP_TOKEN_PAD), -1);
    assert_int_equal(mop_tokenizer_special(T, 99), -1);
}

static void round_trip(const char *s)
{
    int32_t ids[1024];
    char out[2048];
    size_t n, m;
    assert_int_equal(mop_tokenizer_encode(T, s, strlen(s), 0, ids, 1024, &n), MOP_OK);
    assert_int_equal(mop_tokenizer_decode(T, ids, n, 0, out, sizeof out, &m), MOP_OK);
    assert_int_equal(m, strlen(s));
    assert_string_equal(out, s);
}

static void test_round_trip_and_decode(void **state)
{
    (void)state;
    round_trip("");
    round_trip("hello world");
    round_trip("  tabs\tand\nnewlines \n\n  ");
    round_trip("caf\xC3\xA9 na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E 3.14159");
    round_trip("emoji \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 \xF0\x9F\x87\xAB\xF0\x9F\x87\xB7");
    round_trip("int f(int x) { return x*2; } // don't");
    /* control tokens: skipped by default, rendered with the flag; user-defined always */
    const int32_t ids[] = {1, merged_id(&V, "hello"), 3, 2};
    char out[64];
    size_t n;
    assert_int_equal(mop_tokenizer_decode(T, ids, 4, 0, out, sizeof out, &n), MOP_OK);
    assert_string_equal(out, "hello<x>");
    assert_int_equal(mop_tokenizer_decode(T, ids, 4, MOP_TOKENIZE_PARSE_SPECIAL, out, sizeof out,
                                          &n), MOP_OK);
    assert_string_equal(out, "<|im_start|>hello<x><|im_end|>");
}

static void test_invalid_args_and_small_buffers(void **state)
{
    (void)state;
    int32_t ids[8];
    char buf[8];
    size_t n = 12345;
    assert_int_equal(mop_tokenizer_encode(NULL, "a", 1, 0, ids, 8, &n), MOP_E_INVALID_ARG);
    assert_int_equal(mop_tokenizer_encode(T, "a", 1, 0, ids, 8, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_tokenizer_encode(T, NULL, 1, 0, ids, 8, &n), MOP_E_INVALID_ARG);
    assert_int_equal(mop_tokenizer_encode(T, "a", 1, 0, NULL, 8, &n), MOP_E_INVALID_ARG);
    assert_int_equal(mop_tokenizer_encode(T, "a", 1, 64, ids, 8, &n), MOP_E_INVALID_ARG);
    assert_int_equal(n, 12345);
    /* invalid UTF-8: truncated sequence, overlong, surrogate */
    assert_int_equal(mop_tokenizer_encode(T, "ab\xC3(", 4, 0, ids, 8, &n), MOP_E_INVALID_ARG);
    assert_string_equal(mop_last_error(), "tokenize: text is not valid UTF-8 at byte 2");
    assert_int_equal(mop_tokenizer_encode(T, "\xC0\xAF", 2, 0, ids, 8, &n), MOP_E_INVALID_ARG);
    assert_int_equal(mop_tokenizer_encode(T, "x\xED\xA0\x80", 4, 0, ids, 8, &n), MOP_E_INVALID_ARG);
    assert_string_equal(mop_last_error(), "tokenize: text is not valid UTF-8 at byte 1");
    /* embedded NUL is text like any other */
    assert_int_equal(mop_tokenizer_encode(T, "a\0b", 3, 0, ids, 8, &n), MOP_OK);
    assert_int_equal(n, 3);
    /* too small: MOP_E_RANGE with the size needed; a size query with cap 0 */
    assert_int_equal(mop_tokenizer_encode(T, "abc", 3, 0, ids, 1, &n), MOP_E_RANGE);
    assert_int_equal(n, 2);
    assert_int_equal(mop_tokenizer_encode(T, "hello world", 11, 0, NULL, 0, &n), MOP_E_RANGE);
    assert_int_equal(n, 2);
    const int32_t hw[] = {merged_id(&V, "hello"), merged_id(&V, "Ġworld")};
    assert_int_equal(mop_tokenizer_decode(T, hw, 2, 0, buf, 8, &n), MOP_E_RANGE);
    assert_int_equal(n, 11);
    assert_int_equal(mop_tokenizer_decode(T, hw, 1, 0, buf, 5, &n), MOP_OK); /* exact, no NUL */
    assert_int_equal(n, 5);
    assert_memory_equal(buf, "hello", 5);
    const int32_t bad[] = {0, V.n_tokens};
    assert_int_equal(mop_tokenizer_decode(T, bad, 2, 0, buf, 8, &n), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "at index 1 out of range"));
    assert_int_equal(mop_tokenizer_decode(T, NULL, 1, 0, buf, 8, &n), MOP_E_INVALID_ARG);
}

static void test_validation(void **state)
{
    (void)state;
    vocab v;
    mop_tokenizer *t = NULL;
    mop_tokenizer_spec sp = make_spec(&v, -1, "smollm");
    /* merge of a token that does not exist */
    v.merges[3] = (mop_tok_str){"zz", 2};
    assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "merge 1"));
    /* merge whose result is not a token: "c a" */
    sp = make_spec(&v, -1, "smollm");
    v.merges[0] = (mop_tok_str){"c", 1};
    v.merges[1] = (mop_tok_str){"a", 1};
    assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "result is not a token"));
    sp = make_spec(&v, -1, "smollm");
    sp.eos = sp.n_tokens;
    assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_E_FORMAT);
    sp = make_spec(&v, -1, "smollm");
    v.types[7] = 9;
    assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_E_FORMAT);
    sp = make_spec(&v, -1, "no-such-pre");
    assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_E_UNSUPPORTED);
    sp.n_tokens = 0;
    assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_E_FORMAT);
    assert_null(t);
    assert_int_equal(mop_tokenizer_create(NULL, &t), MOP_E_INVALID_ARG);
}

/* ---- allocation failure: every failing allocation gives MOP_E_NOMEM and leaks nothing */
static long alloc_budget;
static void *failing_alloc(size_t size, void *user)
{
    (void)user;
    if (alloc_budget-- <= 0)
        return NULL;
    void *p = NULL;
    return posix_memalign(&p, 64, size ? (size + 63) & ~(size_t)63 : 64) == 0 ? p : NULL;
}
static void plain_free(void *p, void *user)
{
    (void)user;
    free(p);
}

static void test_allocation_failures(void **state)
{
    (void)state;
    mop_tokenizer_free(T); /* the allocator can only change with nothing alive */
    T = NULL;
    assert_int_equal(mop_alloc_live(), 0);
    mop_allocator a = {failing_alloc, plain_free, NULL};
    assert_int_equal(mop_set_allocator(&a), MOP_OK);
    vocab v;
    mop_tokenizer_spec sp = make_spec(&v, -1, "smollm");
    int ok = 0;
    for (long k = 0; k < 200 && !ok; k++) {
        alloc_budget = k;
        mop_tokenizer *t = NULL;
        mop_status st = mop_tokenizer_create(&sp, &t);
        if (st == MOP_OK) {
            /* then encode under the same budget scheme */
            for (long j = 0; j < 50; j++) {
                alloc_budget = j;
                int32_t ids[16];
                size_t n;
                mop_status se = mop_tokenizer_encode(t, "hello world 12", 14, 0, ids, 16, &n);
                if (se == MOP_OK)
                    break;
                assert_int_equal(se, MOP_E_NOMEM);
            }
            alloc_budget = 1L << 30;
            mop_tokenizer_free(t);
            ok = 1;
        } else {
            assert_int_equal(st, MOP_E_NOMEM);
        }
        assert_int_equal(mop_alloc_live(), 0);
    }
    assert_true(ok);
    assert_int_equal(mop_set_allocator(NULL), MOP_OK);
    assert_int_equal(setup(NULL), 0);
}

/* ---- the public calls through a model ------------------------------------ */
static void test_public_api(void **state)
{
    (void)state;
    struct mop_model m;
    memset(&m, 0, sizeof m);
    int32_t ids[8];
    size_t n;
    char buf[32];
    assert_int_equal(mop_tokenize(&m, "ab", 2, 0, ids, 8, &n), MOP_E_UNSUPPORTED);
    assert_string_equal(mop_last_error(), "mop_tokenize: model has no tokenizer");
    assert_int_equal(mop_detokenize(&m, ids, 0, 0, buf, 8, &n), MOP_E_UNSUPPORTED);
    assert_int_equal(mop_model_special_token(&m, MOP_TOKEN_EOS), -1);
    assert_int_equal(mop_tokenize(NULL, "ab", 2, 0, ids, 8, &n), MOP_E_INVALID_ARG);
    m.tok = T;
    assert_int_equal(mop_tokenize(&m, "ab", 2, 0, ids, 8, &n), MOP_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], merged_id(&V, "ab"));
    assert_int_equal(mop_detokenize(&m, ids, 1, 0, buf, sizeof buf, &n), MOP_OK);
    assert_string_equal(buf, "ab");
    assert_int_equal(mop_model_special_token(&m, MOP_TOKEN_EOT), 2);
    mop_chat_message msg = {"user", "hi"};
    assert_int_equal(mop_chat_format(&m, &msg, 1, 1, buf, sizeof buf, &n), MOP_E_UNSUPPORTED);
}

/* ---- chat ------------------------------------------------------------------ */
static const char SMOL_TEMPLATE[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

static mop_tokenizer *with_template(vocab *v, const char *tpl)
{
    mop_tokenizer_spec sp = make_spec(v, -1, "smollm");
    sp.chat_template = (mop_tok_str){tpl, strlen(tpl)};
    mop_tokenizer *t = NULL;
    assert_int_equal(mop_tokenizer_create(&sp, &t), MOP_OK);
    return t;
}

static void test_chat_chatml(void **state)
{
    (void)state;
    vocab v;
    mop_tokenizer *t = with_template(&v, SMOL_TEMPLATE);
    char buf[512];
    size_t n;
    const mop_chat_message user[] = {{"user", "Hi!"}, {"assistant", "Hello."}};
    assert_int_equal(mop_chat_render(t, user, 2, 1, buf, sizeof buf, &n), MOP_OK);
    const char *want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                       "by Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                       "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>assistant\n";
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
    /* a system message of the caller's replaces the default */
    const mop_chat_message sys[] = {{"system", "Be brief."}, {"user", "Hi"}};
    assert_int_equal(mop_chat_render(t, sys, 2, 0, buf, sizeof buf, &n), MOP_OK);
    assert_string_equal(buf, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    /* no messages: just the prompt */
    assert_int_equal(mop_chat_render(t, NULL, 0, 1, buf, sizeof buf, &n), MOP_OK);
    assert_string_equal(buf, "<|im_start|>assistant\n");
    /* too small -> MOP_E_RANGE with the size */
    assert_int_equal(mop_chat_render(t, user, 2, 1, buf, 10, &n), MOP_E_RANGE);
    assert_int_equal(n, strlen(want));
    const mop_chat_message bad[] = {{"user", NULL}};
    assert_int_equal(mop_chat_render(t, bad, 1, 1, buf, sizeof buf, &n), MOP_E_INVALID_ARG);
    mop_tokenizer_free(t);

    /* a ChatML template without a default system message, written with \n escapes */
    t = with_template(&v, "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + "
                          "m['content'] + '<|im_end|>\\n'}}{% endfor %}");
    assert_int_equal(mop_chat_render(t, user, 1, 0, buf, sizeof buf, &n), MOP_OK);
    assert_string_equal(buf, "<|im_start|>user\nHi!<|im_end|>\n");
    mop_tokenizer_free(t);
    /* escaped default literal */
    t = with_template(&v, "{{ '<|im_start|>system\\nYou are \\'Qwen\\'.<|im_end|>\\n' }}"
                          "{{'<|im_start|>' + m['role'] }}");
    assert_int_equal(mop_chat_render(t, user, 1, 0, buf, sizeof buf, &n), MOP_OK);
    assert_string_equal(buf, "<|im_start|>system\nYou are 'Qwen'.<|im_end|>\n"
                             "<|im_start|>user\nHi!<|im_end|>\n");
    mop_tokenizer_free(t);
    /* not ChatML, or none at all */
    t = with_template(&v, "{{ bos_token }}[INST] {{ m }} [/INST]");
    assert_int_equal(mop_chat_render(t, user, 1, 0, buf, sizeof buf, &n), MOP_E_UNSUPPORTED);
    mop_tokenizer_free(t);
    assert_int_equal(mop_chat_render(T, user, 1, 0, buf, sizeof buf, &n), MOP_E_UNSUPPORTED);
}

/* ---- Hugging Face tokenizer.json -------------------------------------------- */
static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_hf_dir(void **state)
{
    (void)state;
    long live0 = mop_alloc_live();
    char dir[] = "/tmp/mop_tok_XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_file(dir, "tokenizer.json",
               "{\"version\": \"1.0\", \"normalizer\": null,"
               " \"added_tokens\": [{\"id\": 0, \"content\": \"<|im_end|>\", \"special\": true},"
               "                    {\"id\": 7, \"content\": \"<t>\", \"special\": false}],"
               " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
               "   {\"type\": \"Digits\", \"individual_digits\": true},"
               "   {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}]},"
               " \"model\": {\"type\": \"BPE\", \"unk_token\": null, \"vocab\": {"
               "   \"<|im_end|>\": 0, \"a\": 1, \"b\": 2, \"Ġ\": 3, \"ab\": 4, \"Ġab\": 5, \"1\": 6},"
               "   \"merges\": [\"a b\", [\"Ġ\", \"ab\"]]}}");
    write_file(dir, "tokenizer_config.json",
               "{\"eos_token\": {\"content\": \"<|im_end|>\"}, \"bos_token\": null,"
               " \"chat_template\": \"{{'<|im_start|>' + m['role'] }}\"}");
    mop_tokenizer *t = NULL;
    assert_int_equal(mop_tokenizer_from_hf_dir(dir, &t), MOP_OK);
    assert_int_equal(mop_tokenizer_n_vocab(t), 8);
    EXPECT(t, "ab ab1<t><|im_end|>", MOP_TOKENIZE_PARSE_SPECIAL, 4, 5, 6, 7, 0);
    assert_int_equal(mop_tokenizer_special(t, MOP_TOKEN_EOS), 0);
    assert_int_equal(mop_tokenizer_special(t, MOP_TOKEN_BOS), -1);
    assert_non_null(mop_tokenizer_chat_template(t));
    mop_tokenizer_free(t);

    /* one id far beyond the number of entries: refused before the table for
     * 300,000,001 ids (about 6 GB) is allocated (issue 14, F4) */
    write_file(dir, "tokenizer.json",
               "{\"normalizer\": null, \"added_tokens\": [],"
               " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
               " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 300000000},"
               "   \"merges\": []}}");
    struct rusage ru0, ru1;
    assert_int_equal(getrusage(RUSAGE_SELF, &ru0), 0);
    assert_int_equal(mop_tokenizer_from_hf_dir(dir, &t), MOP_E_FORMAT);
    assert_int_equal(getrusage(RUSAGE_SELF, &ru1), 0);
    assert_non_null(strstr(mop_last_error(), "largest token id is 300000000"));
    assert_true(ru1.ru_maxrss - ru0.ru_maxrss < 64 * 1024); /* KiB: under 64 MiB more */
    /* the same through added_tokens */
    write_file(dir, "tokenizer.json",
               "{\"normalizer\": null, \"added_tokens\": [{\"id\": 300000000, \"content\": \"x\"}],"
               " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
               " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}");
    assert_int_equal(mop_tokenizer_from_hf_dir(dir, &t), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "only 2 vocab and added-token entries"));
    /* a gap with as many entries as ids (two share id 0) is still caught */
    write_file(dir, "tokenizer.json",
               "{\"normalizer\": null, \"added_tokens\": [{\"id\": 0, \"content\": \"x\"}],"
               " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
               " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"c\": 2}, \"merges\": []}}");
    assert_int_equal(mop_tokenizer_from_hf_dir(dir, &t), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "no token has id 1"));

    /* unsupported model type */
    write_file(dir, "tokenizer.json", "{\"model\": {\"type\": \"Unigram\"}}");
    assert_int_equal(mop_tokenizer_from_hf_dir(dir, &t), MOP_E_UNSUPPORTED);
    write_file(dir, "tokenizer.json", "{\"model\": ");
    assert_int_equal(mop_tokenizer_from_hf_dir(dir, &t), MOP_E_FORMAT);
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    assert_int_equal(mop_tokenizer_from_hf_dir(dir, &t), MOP_E_IO);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    rmdir(dir);
    assert_int_equal(mop_alloc_live(), live0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merges_follow_rank_then_position),
        cmocka_unit_test(test_pre_tokenizer_splits),
        cmocka_unit_test(test_unicode_classes),
        cmocka_unit_test(test_unknown_bytes_fall_back),
        cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_round_trip_and_decode),
        cmocka_unit_test(test_invalid_args_and_small_buffers),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_public_api),
        cmocka_unit_test(test_chat_chatml),
        cmocka_unit_test(test_hf_dir),
        cmocka_unit_test(test_allocation_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
