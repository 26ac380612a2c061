/* Read-only mappings and atomic writes (temp file, fsync, rename). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"

mop_status mop_map_file(const char *path, void **addr, size_t *size)
{
    MOP_CHECK_ARG(path && addr && size);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mop_fail(MOP_E_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mop_fail(MOP_E_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mop_fail(MOP_E_IO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        *addr = NULL;
        *size = 0;
        return MOP_OK;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return mop_fail(MOP_E_IO, "%s: mmap: %s", path, strerror(e));
    *addr = p;
    *size = (size_t)st.st_size;
    return MOP_OK;
}

void mop_unmap_file(void *addr, size_t size)
{
    if (addr && size)
        munmap(addr, size);
}

mop_status mop_read_file(const char *path, size_t max_size, char **out, size_t *size)
{
    MOP_CHECK_ARG(path && out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return mop_fail(MOP_E_IO, "%s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = mop_alloc(cap);
    mop_status st = buf ? MOP_OK : mop_fail(MOP_E_NOMEM, "%s: out of memory", path);
    while (st == MOP_OK) {
        if (n + 1 >= cap) {
            if (cap >= max_size) {
                st = mop_fail(MOP_E_RANGE, "%s: larger than %zu bytes", path, max_size);
                break;
            }
            char *bigger = mop_alloc(cap * 2);
            if (!bigger) {
                st = mop_fail(MOP_E_NOMEM, "%s: out of memory", path);
                break;
            }
            memcpy(bigger, buf, n);
            mop_free(buf);
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                st = mop_fail(MOP_E_IO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (st != MOP_OK) {
        mop_free(buf);
        return st;
    }
    buf[n] = '\0';
    *out = buf;
    if (size)
        *size = n;
    return MOP_OK;
}

mop_status mop_fwrite_all(FILE *f, const void *data, size_t size)
{
    if (size && fwrite(data, 1, size, f) != size)
        return mop_fail(MOP_E_IO, "write failed: %s", strerror(errno));
    return MOP_OK;
}

/* Create a new file `path`.tmp.XXXXXX (X from [0-9a-z], written into tmp)
 * with O_EXCL and `mode`, which the umask reduces. mkstemp() is not used: it
 * always creates 0600, whatever the umask. Returns the descriptor or -1. */
static int create_temp(char *tmp, size_t n, mode_t mode)
{
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
                 ((uint64_t)getpid() << 32);
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t z = x + 0x9e3779b97f4a7c15u * ++counter; /* splitmix64 */
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        z ^= z >> 31;
        for (int i = 0; i < 6; i++, z /= 36)
            tmp[n + 5 + i] = "0123456789abcdefghijklmnopqrstuvwxyz"[z % 36];
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    return -1;
}

mop_status mop_write_atomic(const char *path, mop_write_fn write, void *user)
{
    return mop_write_atomic_flags(path, 0, write, user);
}

mop_status mop_write_atomic_flags(const char *path, int32_t flags, mop_write_fn write, void *user)
{
    MOP_CHECK_ARG(path && write && (flags & ~MOP_SAVE_PRIVATE) == 0);
    size_t n = strlen(path);
    char *tmp = mop_alloc(n + 16);
    if (!tmp)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", path);
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp.XXXXXX", 12);
    int fd = create_temp(tmp, n, (flags & MOP_SAVE_PRIVATE) ? 0600 : 0666);
    if (fd < 0) {
        mop_status st = mop_fail(MOP_E_IO, "%s: cannot create temporary file: %s", path,
                                 strerror(errno));
        mop_free(tmp);
        return st;
    }
    FILE *f = fdopen(fd, "wb");
    mop_status st = MOP_OK;
    if (!f) {
        close(fd);
        st = mop_fail(MOP_E_IO, "%s: %s", path, strerror(errno));
    } else {
        st = write(f, user);
        if (st == MOP_OK && fflush(f) != 0)
            st = mop_fail(MOP_E_IO, "%s: %s", path, strerror(errno));
        if (st == MOP_OK && fsync(fileno(f)) != 0)
            st = mop_fail(MOP_E_IO, "%s: fsync: %s", path, strerror(errno));
        if (fclose(f) != 0 && st == MOP_OK)
            st = mop_fail(MOP_E_IO, "%s: %s", path, strerror(errno));
    }
    if (st == MOP_OK && rename(tmp, path) != 0)
        st = mop_fail(MOP_E_IO, "%s: rename: %s", path, strerror(errno));
    if (st != MOP_OK)
        unlink(tmp);
    mop_free(tmp);
    return st;
}
