/* Status codes, error messages, version and allocator hooks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"
#include "libmop/mop.h"

static void test_status_names_are_distinct(void **state)
{
    (void)state;
    assert_string_equal(mop_status_name(MOP_OK), "MOP_OK");
    assert_string_equal(mop_status_name(MOP_E_FORMAT), "MOP_E_FORMAT");
    assert_string_equal(mop_status_name((mop_status)-999), "MOP_E_UNKNOWN");
    const mop_status all[] = {
#define X_(name, value, text) name,
        MOP_STATUS_TABLE(X_)
#undef X_
    };
    size_t n = sizeof all / sizeof all[0];
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            assert_int_not_equal(all[i], all[j]);
            assert_string_not_equal(mop_status_str(all[i]), mop_status_str(all[j]));
        }
}

static void test_last_error_is_set_and_prefixed(void **state)
{
    (void)state;
    assert_int_equal(mop_fail(MOP_E_SHAPE, "tensor %s: expected %d", "a", 3), MOP_E_SHAPE);
    assert_string_equal(mop_last_error(), "tensor a: expected 3");
    mop_error_prefix("loading %s", "m.gguf");
    assert_string_equal(mop_last_error(), "loading m.gguf: tensor a: expected 3");
}

/* mop_fail may take mop_last_error() as an argument, even twice and at an
 * offset, and the message is what printf would give for a copy of it (issue
 * 14, F5: the message was formatted into the buffer it was read from). */
static void test_fail_may_quote_last_error(void **state)
{
    (void)state;
    (void)mop_fail(MOP_E_SHAPE, "inner detail %d", 42);
    assert_int_equal(mop_fail(MOP_E_FORMAT, "outer: %s [%s] tail=%s", mop_last_error(),
                              mop_last_error(), mop_last_error() + 6),
                     MOP_E_FORMAT);
    assert_string_equal(mop_last_error(),
                        "outer: inner detail 42 [inner detail 42] tail=detail 42");

    /* a message as long as the buffer, quoted after a prefix: truncated, terminated */
    char big[1100];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    (void)mop_fail(MOP_E_IO, "%s", big);
    size_t len = strlen(mop_last_error());
    assert_true(len > 0 && len < sizeof big - 1);
    (void)mop_fail(MOP_E_IO, "pre: %s", mop_last_error());
    const char *e = mop_last_error();
    assert_int_equal(strlen(e), len);
    assert_memory_equal(e, "pre: xxxx", 9);
    for (size_t i = 5; i < len; i++)
        assert_int_equal(e[i], 'x');
}

static void test_version_matches_header(void **state)
{
    (void)state;
    assert_int_equal(mop_version_number(), MOP_VERSION_NUMBER);
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", MOP_VERSION_MAJOR, MOP_VERSION_MINOR,
             MOP_VERSION_PATCH);
    assert_string_equal(mop_version(), expect);
}

static int counted;
static void *count_alloc(size_t n, void *user)
{
    (void)user;
    counted++;
    void *p = NULL;
    return posix_memalign(&p, 64, n ? n : 1) == 0 ? p : NULL;
}
static void count_free(void *p, void *user)
{
    (void)user;
    free(p);
}

static void test_allocator_hooks(void **state)
{
    (void)state;
    mop_allocator bad = {count_alloc, NULL, NULL};
    assert_int_equal(mop_set_allocator(&bad), MOP_E_INVALID_ARG);
    mop_allocator good = {count_alloc, count_free, NULL};
    assert_int_equal(mop_set_allocator(&good), MOP_OK);
    void *p = mop_alloc(100);
    assert_non_null(p);
    assert_int_equal(((uintptr_t)p) % 64, 0);
    assert_int_equal(counted, 1);
    /* Swapping allocators while memory is live would free with the wrong hook. */
    assert_int_equal(mop_set_allocator(NULL), MOP_E_STATE);
    mop_free(p);
    assert_int_equal(mop_set_allocator(NULL), MOP_OK);
}

static void test_overflow_checks(void **state)
{
    (void)state;
    size_t out;
    assert_false(mop_mul_ok(SIZE_MAX / 2 + 1, 2, &out));
    assert_true(mop_mul_ok(3, 4, &out));
    assert_int_equal(out, 12);
    assert_false(mop_add_ok(SIZE_MAX, 1, &out));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names_are_distinct),
        cmocka_unit_test(test_last_error_is_set_and_prefixed),
        cmocka_unit_test(test_fail_may_quote_last_error),
        cmocka_unit_test(test_version_matches_header),
        cmocka_unit_test(test_allocator_hooks),
        cmocka_unit_test(test_overflow_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
