/* The GGUF weight codecs libmop is built with (core/weight_codec.h): the one
 * place that names the format modules for core's loader. */
#include "core/weight_codec.h"
#include "sparse/pruned_gguf.h"

const mop_gguf_codec *const mop_gguf_codecs[] = {&pruned_gguf_codec, NULL};
