/* Status names and texts, and the thread-local last-error message. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char last_error[1024];

const char *mop_status_name(mop_status s)
{
    switch (s) {
#define MOP_STATUS_NAME_(name, value, text) case name: return #name;
        MOP_STATUS_TABLE(MOP_STATUS_NAME_)
#undef MOP_STATUS_NAME_
    }
    return "MOP_E_UNKNOWN";
}

const char *mop_status_str(mop_status s)
{
    switch (s) {
#define MOP_STATUS_TEXT_(name, value, text) case name: return text;
        MOP_STATUS_TABLE(MOP_STATUS_TEXT_)
#undef MOP_STATUS_TEXT_
    }
    return "unknown status";
}

const char *mop_last_error(void)
{
    return last_error;
}

mop_status mop_fail(mop_status s, const char *fmt, ...)
{
    /* Format into a local buffer first: callers may pass mop_last_error()
     * (or a pointer into it) as an argument, and vsnprintf into the buffer
     * it reads from would be undefined behaviour (issue 14, F5). */
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(last_error, msg, sizeof last_error);
    mop_log(MOP_LOG_DEBUG, "%s: %s", mop_status_name(s), last_error);
    return s;
}

mop_status mop_struct_size_check(const char *fn, const char *what, size_t struct_size,
                                 size_t min, size_t max)
{
    if (struct_size >= min && struct_size <= max)
        return MOP_OK;
    return mop_fail(MOP_E_INVALID_ARG,
                    "%s: %s = %zu, expected %zu to %zu (the struct's size in a libmop header "
                    "from its first release to this one)",
                    fn, what, struct_size, min, max);
}

void mop_error_prefix(const char *fmt, ...)
{
    char prefix[512], old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    /* Truncation of an over-long message is acceptable. */
    size_t n = strlen(prefix);
    if (n > sizeof last_error - 3)
        n = sizeof last_error - 3;
    memcpy(last_error, prefix, n);
    memcpy(last_error + n, ": ", 2);
    size_t rest = sizeof last_error - n - 3;
    size_t m = strlen(old);
    if (m > rest)
        m = rest;
    memcpy(last_error + n + 2, old, m);
    last_error[n + 2 + m] = '\0';
}

const char *mop_version(void)
{
#define MOP_STR2_(x) #x
#define MOP_STR_(x) MOP_STR2_(x)
    return MOP_STR_(MOP_VERSION_MAJOR) "." MOP_STR_(MOP_VERSION_MINOR) "." MOP_STR_(
        MOP_VERSION_PATCH);
}

uint32_t mop_version_number(void)
{
    return MOP_VERSION_NUMBER;
}
