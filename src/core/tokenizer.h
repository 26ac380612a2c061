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

#endif
