/* Pruned models in GGUF (docs/FORMAT.md, "Pruned models in GGUF"): the load
 * side. A packed sparse weight W named "<name>" is stored as the 1-D I8
 * tensor "<name>.sparse" holding sparse.h's serialised stream; a compact LM
 * head is the ordinary F16 / Q8_0 tensor "output.weight" with metadata
 * mop.lm_head.format naming its type. */
#ifndef MOP_PRUNED_GGUF_H
#define MOP_PRUNED_GGUF_H

#include "gguf.h"
#include "model.h"
#include "weight_codec.h"

#define PRUNED_GGUF_SUFFIX ".sparse"

/* The prebuilt weights of a GGUF file for mop_model_assemble: every
 * "<name>.sparse" tensor deserialised (each index and count validated) and
 * the compact LM head wrapped over the mapping. *out is NULL with *n = 0 for
 * a plain file. @return MOP_OK, MOP_E_FORMAT, MOP_E_NOMEM */
mop_status pruned_gguf_weights(const gguf_file *g, int32_t n_layer, mop_src_weight **out,
                               int64_t *n);

/* Release what assembly left (entries whose w.ops is still set) and the array. */
void pruned_gguf_weights_free(mop_src_weight *w, int64_t n);

/* The two above as the GGUF loader's codec (src/codecs.c). */
extern const mop_gguf_codec pruned_gguf_codec;

#endif
