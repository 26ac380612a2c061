/* Weights a format packs into GGUF tensors of its own (docs/FORMAT.md,
 * "Pruned models in GGUF"): the GGUF loader knows only this convention, and
 * each format module supplies one codec. The table of codecs lives outside
 * core (src/codecs.c), so core never includes a format's header; adding a
 * format means its mop_weight_ops table plus one codec there. */
#ifndef MOP_WEIGHT_CODEC_H
#define MOP_WEIGHT_CODEC_H

#include "gguf.h"
#include "model.h"

typedef struct mop_gguf_codec {
    const char *name;
    /* The prebuilt weights this format stores in g (*out NULL, *n 0 when
     * the file holds none), each validated; MOP_E_FORMAT on a bad one. */
    mop_status (*load)(const gguf_file *g, int32_t n_layer, mop_src_weight **out, int64_t *n);
    /* Release what assembly left (entries whose w.ops is still set) and the array. */
    void (*release)(mop_src_weight *w, int64_t n);
} mop_gguf_codec;

/* The codecs libmop is built with, NULL-terminated (src/codecs.c). */
extern const mop_gguf_codec *const mop_gguf_codecs[];

#endif
