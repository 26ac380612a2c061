/* Byte-level BPE tokenizer (GPT-2 family) built from a model file's vocab. */
#ifndef MOP_TOKENIZER_H
#define MOP_TOKENIZER_H

#include "gguf.h"
#include "internal.h"

typedef struct mop_tokenizer mop_tokenizer;

/* From GGUF metadata: tokenizer.ggml.{model,pre,tokens,token_type,merges,
 * bos/eos/eot/padding_token_id,add_bos_token} and tokenizer.chat_template. */
mop_status mop_tokenizer_from_gguf(const gguf_file *g, mop_tokenizer **out);

/* From a Hugging Face tokenizer.json (+ tokenizer_config.json for the chat
 * template and special tokens when present) in directory `dir`. */
mop_status mop_tokenizer_from_hf_dir(const char *dir, mop_tokenizer **out);

void mop_tokenizer_free(mop_tokenizer *t);

int32_t mop_tokenizer_n_vocab(const mop_tokenizer *t);

/* ---- internal constructor, shared by the GGUF and HF paths and the tests -- */

/* Token types as stored in GGUF (tokenizer.ggml.token_type). */
enum {
    MOP_TOKTYPE_NORMAL = 1, MOP_TOKTYPE_UNKNOWN = 2, MOP_TOKTYPE_CONTROL = 3,
    MOP_TOKTYPE_USER_DEFINED = 4, MOP_TOKTYPE_UNUSED = 5, MOP_TOKTYPE_BYTE = 6
};

/* A string that need not be NUL-terminated. */
typedef struct mop_tok_str {
    const char *s;
    size_t len;
} mop_tok_str;

/* Everything a tokenizer is built from. Nothing is borrowed: the tokenizer
 * copies what it keeps. Normal tokens and merges are in the GPT-2
 * byte-to-unicode form ("Ġthe"); control and user-defined tokens are raw
 * UTF-8 ("<|im_start|>"). Special ids are -1 when absent. */
typedef struct mop_tokenizer_spec {
    mop_tok_str pre;               /* pre-tokenizer name: "smollm", "gpt2", "llama-bpe", ... */
    int32_t n_tokens;
    const mop_tok_str *tokens;     /* n_tokens */
    const int32_t *token_types;    /* n_tokens MOP_TOKTYPE_*, or NULL = all normal */
    int32_t n_merges;
    const mop_tok_str *merges;     /* 2 * n_merges: left, right of merge i (rank i) */
    int32_t bos, eos, eot, pad, unk;
    int32_t add_bos;
    mop_tok_str chat_template;     /* s == NULL: none */
    /* More end-of-generation ids the file names (GGUF eom and FIM markers);
     * eos and eot are always in the set. Zero-initialised: none. */
    int32_t eog_extra[8];
    int32_t n_eog_extra;
} mop_tokenizer_spec;

/* Validate (ids in range, merges of existing tokens whose concatenation is a
 * token) and build the lookup tables and pre-tokenizer regex.
 * MOP_E_FORMAT for inconsistent data, MOP_E_UNSUPPORTED for an unknown
 * pre-tokenizer, MOP_E_NOMEM. */
mop_status mop_tokenizer_create(const mop_tokenizer_spec *spec, mop_tokenizer **out);

/* Tokenize / detokenize with the semantics of mop_tokenize / mop_detokenize. */
mop_status mop_tokenizer_encode(const mop_tokenizer *t, const char *text, size_t len,
                                int32_t flags, int32_t *tokens, size_t cap, size_t *n_out);
mop_status mop_tokenizer_decode(const mop_tokenizer *t, const int32_t *tokens, size_t n_tokens,
                                int32_t flags, char *buf, size_t cap, size_t *n_out);

/* Special token id (mop_special_token), -1 if none; EOT falls back to EOS. */
int32_t mop_tokenizer_special(const mop_tokenizer *t, int32_t which);

/* The end-of-generation ids, ascending, and their count (see
 * mop_model_eog_tokens for the rule); NULL / 0 for a NULL tokenizer. */
const int32_t *mop_tokenizer_eog(const mop_tokenizer *t, int32_t *n);

/* 1 if @p token ends generation, else 0. */
int32_t mop_tokenizer_is_eog(const mop_tokenizer *t, int32_t token);

/* The chat template (NUL-terminated) or NULL. */
const char *mop_tokenizer_chat_template(const mop_tokenizer *t);

/* Render a chat with the tokenizer's template (see mop_chat_format; chat.c). */
mop_status mop_chat_render(const mop_tokenizer *t, const mop_chat_message *messages,
                           size_t n_messages, int32_t add_assistant_prompt, char *buf,
                           size_t cap, size_t *n_out);

#endif
