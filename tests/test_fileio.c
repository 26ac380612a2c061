/* File helpers: atomic writes leave either the old or the new file, never a
 * half-written one or a stray temporary; mappings and bounded reads. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "fileio.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/mop-fileio-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int count_entries(void)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static int teardown(void **state)
{
    (void)state;
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
    rmdir(dir);
    return 0;
}

static mop_status write_text(FILE *f, void *user)
{
    return mop_fwrite_all(f, user, strlen(user));
}

static mop_status write_half_then_fail(FILE *f, void *user)
{
    (void)user;
    MOP_TRY(mop_fwrite_all(f, "partial", 7));
    return mop_fail(MOP_E_IO, "simulated failure");
}

static void test_atomic_write_replaces_or_keeps(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/out.bin", dir);
    assert_int_equal(mop_write_atomic(path, write_text, "first"), MOP_OK);

    char *data = NULL;
    size_t n = 0;
    assert_int_equal(mop_read_file(path, 1 << 20, &data, &n), MOP_OK);
    assert_int_equal(n, 5);
    assert_string_equal(data, "first");
    mop_free(data);

    /* A failing writer leaves the old file and no temporary behind. */
    assert_int_equal(mop_write_atomic(path, write_half_then_fail, NULL), MOP_E_IO);
    assert_int_equal(mop_read_file(path, 1 << 20, &data, &n), MOP_OK);
    assert_string_equal(data, "first");
    mop_free(data);
    assert_int_equal(count_entries(), 1);

    assert_int_equal(mop_write_atomic(path, write_text, "second!"), MOP_OK);
    assert_int_equal(mop_read_file(path, 1 << 20, &data, &n), MOP_OK);
    assert_string_equal(data, "second!");
    mop_free(data);
    assert_int_equal(count_entries(), 1);
}

static unsigned mode_of(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return (unsigned)(sb.st_mode & 07777);
}

/* The written file's mode is 0666 less the umask, as fopen() gives (not
 * mkstemp's fixed 0600), and 0600 less the umask with MOP_SAVE_PRIVATE;
 * replacing a file gives it the new mode. */
static void test_atomic_write_mode_follows_umask(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/mode.bin", dir);
    static const struct {
        mode_t mask;
        int32_t flags;
        unsigned want;
    } cases[] = {
        {022, 0, 0644},   {077, 0, 0600}, {002, 0, 0664},
        {022, MOP_SAVE_PRIVATE, 0600}, {077, MOP_SAVE_PRIVATE, 0600},
        {022, 0, 0644},   /* a private file replaced by a default one */
    };
    const int entries = count_entries();
    const mode_t old = umask(022);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        umask(cases[i].mask);
        assert_int_equal(mop_write_atomic_flags(path, cases[i].flags, write_text, "m"), MOP_OK);
        assert_int_equal(mode_of(path), cases[i].want);
    }
    umask(022);
    assert_int_equal(mop_write_atomic(path, write_text, "m"), MOP_OK);
    assert_int_equal(mode_of(path), 0644);
    assert_int_equal(mop_write_atomic_flags(path, 2, write_text, "m"), MOP_E_INVALID_ARG);
    umask(old);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(count_entries(), entries); /* no temporary left behind */
}

static void test_atomic_write_bad_directory(void **state)
{
    (void)state;
    assert_int_equal(mop_write_atomic("/nonexistent-dir/x.bin", write_text, "x"), MOP_E_IO);
    assert_non_null(strstr(mop_last_error(), "/nonexistent-dir/x.bin"));
    assert_int_equal(mop_write_atomic(NULL, write_text, "x"), MOP_E_INVALID_ARG);
}

static void test_read_file_limits(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/big.txt", dir);
    char buf[10000];
    memset(buf, 'a', sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    assert_int_equal(mop_write_atomic(path, write_text, buf), MOP_OK);
    char *data = NULL;
    size_t n = 0;
    assert_int_equal(mop_read_file(path, 4096, &data, &n), MOP_E_RANGE);
    assert_int_equal(mop_read_file(path, 1 << 20, &data, &n), MOP_OK);
    assert_int_equal(n, sizeof buf - 1);
    mop_free(data);
    assert_int_equal(mop_read_file("/nonexistent", 100, &data, &n), MOP_E_IO);
    assert_int_equal(mop_alloc_live(), 0);
}

static void test_map_file(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/m.bin", dir);
    assert_int_equal(mop_write_atomic(path, write_text, "mapped"), MOP_OK);
    void *addr = NULL;
    size_t size = 0;
    assert_int_equal(mop_map_file(path, &addr, &size), MOP_OK);
    assert_int_equal(size, 6);
    assert_memory_equal(addr, "mapped", 6);
    mop_unmap_file(addr, size);

    snprintf(path, sizeof path, "%s/empty.bin", dir);
    assert_int_equal(mop_write_atomic(path, write_text, ""), MOP_OK);
    assert_int_equal(mop_map_file(path, &addr, &size), MOP_OK);
    assert_null(addr);
    assert_int_equal(size, 0);

    assert_int_equal(mop_map_file(dir, &addr, &size), MOP_E_IO); /* a directory */
    assert_int_equal(mop_map_file("/nonexistent", &addr, &size), MOP_E_IO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_atomic_write_replaces_or_keeps),
        cmocka_unit_test(test_atomic_write_mode_follows_umask),
        cmocka_unit_test(test_atomic_write_bad_directory),
        cmocka_unit_test(test_read_file_limits),
        cmocka_unit_test(test_map_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
