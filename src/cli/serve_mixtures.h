/* `mop serve`: the mixtures a server can serve, by name.
 *
 * A mixture's name is the stem of its file in the mixtures folder
 * (DIR/NAME.safetensors). The folder is scanned at start; a name asked for
 * later is looked up in the folder again, so mixtures dropped in while the
 * server runs are found on demand. Every file is checked by loading it once
 * before its name is served. Entries are never removed, so an index stays
 * valid for the life of the registry. Thread-safe. */
#ifndef MOP_SERVE_MIXTURES_H
#define MOP_SERVE_MIXTURES_H

#include <stddef.h>
#include <stdint.h>

#include <libmop/mop.h>

typedef struct serve_mixtures serve_mixtures;

#define SERVE_MIXTURES_MAX 4096   /* most names one server knows */
#define SERVE_NAME_MAX 128        /* longest mixture name, in bytes */

enum { SERVE_BASE = -1, SERVE_UNKNOWN = -2, SERVE_BROKEN = -3 };

/* Scan @p dir (NULL: none, the base model only) for *.safetensors mixtures of @p model, loading each once to
 * check it (a file that does not load is left out with a warning on
 * stderr). @p base_name is the model's own name, which no mixture may take.
 * CLI_OK or CLI_ERROR after printing. */
int serve_mixtures_open(mop_model *model, const char *dir, const char *base_name,
                        serve_mixtures **out);

void serve_mixtures_free(serve_mixtures *r);

/* The index of @p name: SERVE_BASE for the base model's name, an index >= 0
 * for a mixture (found in the folder now if it was not known), SERVE_UNKNOWN
 * when there is no such file (or the name is not a plain file stem), or
 * SERVE_BROKEN when the file exists but does not load (the reason in
 * @p why, cap bytes). */
int32_t serve_mixtures_find(serve_mixtures *r, const char *name, char *why, size_t cap);

/* Number of known mixtures (grows as names are found on demand). */
size_t serve_mixtures_count(serve_mixtures *r);

/* Name, file and prompt-stream length (the cache rows the mixture's prompt
 * takes: K·P in attention-bias mode, P in weighted-sum mode) of entry @p i. */
const char *serve_mixtures_name(serve_mixtures *r, size_t i);
const char *serve_mixtures_path(serve_mixtures *r, size_t i);
int32_t serve_mixtures_stream_len(serve_mixtures *r, size_t i);

/* The longest prompt stream among the known mixtures (0 when none). */
int32_t serve_mixtures_max_stream_len(serve_mixtures *r);

/* The base model's name. */
const char *serve_mixtures_base_name(serve_mixtures *r);

#endif
