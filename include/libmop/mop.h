/**
 * @file mop.h
 * @brief libmop umbrella header: include this one.
 *
 * libmop adapts a frozen (optionally pruned) Llama-family model to many tasks
 * with a Mixture of Prompts (MoPs): K soft-prompt experts injected at a middle
 * layer and weighed per input by a small gate network.
 *
 * A complete inference example (error handling shortened):
 * @code
 * #include <libmop/mop.h>
 *
 * mop_model *model = NULL;
 * if (mop_model_load("SmolLM2-135M-Instruct.Q4_1.gguf", NULL, &model) != MOP_OK) {
 *     fprintf(stderr, "%s\n", mop_last_error());
 *     return 1;
 * }
 * mop_ctx *ctx = NULL;
 * mop_ctx_params cp;
 * mop_ctx_params_init(&cp);
 * cp.n_threads = 2;
 * mop_status st = mop_ctx_create(model, &cp, &ctx);
 * int32_t toks[256];
 * size_t n = 0;
 * st = mop_tokenize(model, "The capital of France is", 24, 0, toks, 256, &n);
 * double total = 0;
 * st = mop_ctx_nll(ctx, toks, (int32_t)n, NULL, &total);
 * mop_ctx_free(ctx);
 * mop_model_free(model);
 * @endcode
 */
#ifndef MOP_H
#define MOP_H

#include "mop_version.h"
#include "mop_core.h"
#include "mop_gate.h"
#include "mop_sparse.h"
#include "mop_fed.h"

#endif
