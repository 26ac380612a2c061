/* File-format loaders behind mop_model_load. Each fills an allocated model
 * (mop_model_alloc) through mop_model_assemble and sets its tokenizer. */
#ifndef MOP_LOADERS_H
#define MOP_LOADERS_H

#include "model.h"

/* path: a .gguf file. */
mop_status mop_load_gguf(mop_model *m, const char *path, const mop_model_params *p);

/* path: a .safetensors file with config.json beside it, or a directory with
 * config.json and *.safetensors (model.safetensors.index.json when sharded). */
mop_status mop_load_safetensors(mop_model *m, const char *path, const mop_model_params *p);

#endif
