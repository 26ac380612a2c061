/* `mop serve`: the registry of mixtures by name (see serve_mixtures.h). */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "serve_mixtures.h"

#define EXT ".safetensors"

typedef struct entry {
    char *name; /* malloc'ed, like path: the pointers stay put when the array grows */
    char *path;
    int32_t stream_len;
} entry;

struct serve_mixtures {
    mop_model *model;
    char *dir;
    char base[SERVE_NAME_MAX + 1];
    pthread_mutex_t lock;
    entry *e;
    size_t n, cap;
};

/* A name is served only if it is a plain file stem: [A-Za-z0-9._-], not
 * starting with '.', at most SERVE_NAME_MAX bytes (so no path can be named). */
static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > SERVE_NAME_MAX || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Load the file once: its prompt-stream length, or -1 with the reason. */
static int32_t check_file(mop_model *model, const char *path, char *why, size_t cap)
{
    mop_mixture *m = NULL;
    mop_status st = mop_mixture_load(model, path, &m);
    if (st != MOP_OK) {
        snprintf(why, cap, "%s", mop_last_error()[0] ? mop_last_error() : mop_status_str(st));
        return -1;
    }
    mop_mixture_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    st = mop_mixture_get_params(m, &p);
    mop_mixture_free(m);
    if (st != MOP_OK) {
        snprintf(why, cap, "%s", mop_status_str(st));
        return -1;
    }
    if (p.gate_mode == MOP_GATE_ORACLE) {
        snprintf(why, cap, "an oracle mixture routes by task label and cannot generate");
        return -1;
    }
    return p.combine == MOP_COMBINE_ATTENTION_BIAS ? p.n_experts * p.prompt_len : p.prompt_len;
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + 1 + strlen(name) + sizeof EXT;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s%s", dir, name, EXT);
    return p;
}

/* Add @p name (lock held); its index, SERVE_UNKNOWN or SERVE_BROKEN. */
static int32_t add(serve_mixtures *r, const char *name, char *why, size_t cap)
{
    if (!r->dir)
        return SERVE_UNKNOWN;
    char *path = join(r->dir, name);
    if (!path) {
        snprintf(why, cap, "out of memory");
        return SERVE_BROKEN;
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        free(path);
        return SERVE_UNKNOWN;
    }
    if (r->n >= SERVE_MIXTURES_MAX) {
        snprintf(why, cap, "the server knows %d mixtures already", SERVE_MIXTURES_MAX);
        free(path);
        return SERVE_BROKEN;
    }
    int32_t sl = check_file(r->model, path, why, cap);
    if (sl < 0) {
        free(path);
        return SERVE_BROKEN;
    }
    if (r->n == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 16;
        entry *ne = realloc(r->e, nc * sizeof *ne);
        if (!ne) {
            free(path);
            snprintf(why, cap, "out of memory");
            return SERVE_BROKEN;
        }
        r->e = ne;
        r->cap = nc;
    }
    entry *e = &r->e[r->n];
    size_t nl = strlen(name);
    if (!(e->name = malloc(nl + 1))) {
        free(path);
        snprintf(why, cap, "out of memory");
        return SERVE_BROKEN;
    }
    memcpy(e->name, name, nl + 1);
    e->path = path;
    e->stream_len = sl;
    return (int32_t)r->n++;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int serve_mixtures_open(mop_model *model, const char *dir, const char *base_name,
                        serve_mixtures **out)
{
    *out = NULL;
    serve_mixtures *r = calloc(1, sizeof *r);
    if (!r)
        return cli_error("out of memory");
    r->model = model;
    snprintf(r->base, sizeof r->base, "%s", base_name);
    pthread_mutex_init(&r->lock, NULL);
    if (!dir) { /* no folder: the base model only */
        *out = r;
        return CLI_OK;
    }
    size_t dl = strlen(dir);
    r->dir = malloc(dl + 1);
    if (!r->dir) {
        serve_mixtures_free(r);
        return cli_error("out of memory");
    }
    memcpy(r->dir, dir, dl + 1);
    while (dl > 1 && r->dir[dl - 1] == '/')
        r->dir[--dl] = '\0';
    DIR *d = opendir(dir);
    if (!d) {
        serve_mixtures_free(r);
        return cli_error("cannot open the mixtures folder '%s': %s", dir, strerror(errno));
    }
    /* names sorted, so /v1/models lists them in a stable order */
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    int rc = CLI_OK;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name), el = sizeof EXT - 1;
        if (len <= el || strcmp(de->d_name + len - el, EXT) != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                rc = cli_error("out of memory");
                break;
            }
            names = nn;
        }
        if (!(names[n] = malloc(len - el + 1))) {
            rc = cli_error("out of memory");
            break;
        }
        memcpy(names[n], de->d_name, len - el);
        names[n++][len - el] = '\0';
    }
    closedir(d);
    if (rc == CLI_OK)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && rc == CLI_OK; i++) {
        char why[256] = "";
        if (!valid_name(names[i])) {
            fprintf(stderr, "mop serve: skipping '%s%s': a mixture name may use only letters, "
                    "digits, '.', '_' and '-' (at most %d bytes, not starting with '.')\n",
                    names[i], EXT, SERVE_NAME_MAX);
        } else if (strcmp(names[i], r->base) == 0) {
            fprintf(stderr, "mop serve: skipping '%s%s': the base model has that name\n",
                    names[i], EXT);
        } else if (add(r, names[i], why, sizeof why) < 0) {
            fprintf(stderr, "mop serve: skipping '%s/%s%s': %s\n", r->dir, names[i], EXT,
                    why[0] ? why : "not a regular file");
        }
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc != CLI_OK) {
        serve_mixtures_free(r);
        return rc;
    }
    *out = r;
    return CLI_OK;
}

void serve_mixtures_free(serve_mixtures *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++) {
        free(r->e[i].name);
        free(r->e[i].path);
    }
    free(r->e);
    free(r->dir);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

int32_t serve_mixtures_find(serve_mixtures *r, const char *name, char *why, size_t cap)
{
    if (why && cap)
        why[0] = '\0';
    if (strcmp(name, r->base) == 0)
        return SERVE_BASE;
    if (!valid_name(name))
        return SERVE_UNKNOWN;
    pthread_mutex_lock(&r->lock);
    int32_t found = SERVE_UNKNOWN;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->e[i].name, name) == 0) {
            found = (int32_t)i;
            break;
        }
    /* not known yet: look in the folder (loading a small file under the
     * lock keeps two requests from adding the same name twice) */
    char local[256];
    if (found == SERVE_UNKNOWN)
        found = add(r, name, why && cap ? why : local, why && cap ? cap : sizeof local);
    pthread_mutex_unlock(&r->lock);
    return found;
}

size_t serve_mixtures_count(serve_mixtures *r)
{
    pthread_mutex_lock(&r->lock);
    size_t n = r->n;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* The array may move when it grows, so it is read under the lock; the
 * strings it points to stay put until the registry is freed. */
const char *serve_mixtures_name(serve_mixtures *r, size_t i)
{
    pthread_mutex_lock(&r->lock);
    const char *s = i < r->n ? r->e[i].name : NULL;
    pthread_mutex_unlock(&r->lock);
    return s;
}

const char *serve_mixtures_path(serve_mixtures *r, size_t i)
{
    pthread_mutex_lock(&r->lock);
    const char *s = i < r->n ? r->e[i].path : NULL;
    pthread_mutex_unlock(&r->lock);
    return s;
}

int32_t serve_mixtures_stream_len(serve_mixtures *r, size_t i)
{
    pthread_mutex_lock(&r->lock);
    int32_t v = i < r->n ? r->e[i].stream_len : 0;
    pthread_mutex_unlock(&r->lock);
    return v;
}

int32_t serve_mixtures_max_stream_len(serve_mixtures *r)
{
    pthread_mutex_lock(&r->lock);
    int32_t v = 0;
    for (size_t i = 0; i < r->n; i++)
        if (r->e[i].stream_len > v)
            v = r->e[i].stream_len;
    pthread_mutex_unlock(&r->lock);
    return v;
}

const char *serve_mixtures_base_name(serve_mixtures *r)
{
    return r->base;
}
