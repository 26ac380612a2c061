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

/* Every params struct: mop_X_params_init(&p) gives the deprecated by-value
 * mop_X_default_params() bytes; the sized call accepts a struct from its
 * first release's size (a prefix: nothing past it is written) to sizeof, and
 * rejects NULL and sizes outside that range. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#define CHECK_INIT(x, first_size)                                              \
    do {                                                                       \
        mop_##x##_params a, b;                                                 \
        memset(&a, 0x5a, sizeof a);                                            \
        assert_int_equal(mop_##x##_params_init(&a), MOP_OK);                   \
        b = mop_##x##_default_params();                                        \
        assert_int_equal(a.struct_size, sizeof a);                             \
        assert_memory_equal(&a, &b, sizeof a);                                 \
        assert_int_equal(mop_##x##_params_init_sized(NULL, sizeof a), MOP_E_INVALID_ARG); \
        assert_int_equal(mop_##x##_params_init_sized(&a, sizeof a + 1), MOP_E_INVALID_ARG); \
        assert_int_equal(mop_##x##_params_init_sized(&a, (first_size) - 1), MOP_E_INVALID_ARG); \
        unsigned char buf[sizeof a + 8];                                       \
        memset(buf, 0x5a, sizeof buf);                                         \
        assert_int_equal(mop_##x##_params_init_sized((mop_##x##_params *)(void *)buf, \
                                                     (first_size)), MOP_OK);   \
        uint32_t got;                                                          \
        memcpy(&got, buf, sizeof got);                                         \
        assert_int_equal(got, (first_size));                                   \
        assert_memory_equal(buf + sizeof got, (unsigned char *)&b + sizeof got, \
                            (first_size) - sizeof got);                        \
        for (size_t i = (first_size); i < sizeof buf; i++)                     \
            assert_int_equal(buf[i], 0x5a);                                    \
    } while (0)

static void test_params_init(void **state)
{
    (void)state;
    CHECK_INIT(model, MOP_SIZE_THROUGH(mop_model_params, n_threads));
    CHECK_INIT(ctx, MOP_SIZE_THROUGH(mop_ctx_params, n_threads));
    CHECK_INIT(sampler, MOP_SIZE_THROUGH(mop_sampler_params, seed));
    CHECK_INIT(mixture, MOP_SIZE_THROUGH(mop_mixture_params, seed));
    CHECK_INIT(loss, MOP_SIZE_THROUGH(mop_loss_params, prox_mu));
    CHECK_INIT(adamw, sizeof(uint32_t));
    CHECK_INIT(prune, MOP_SIZE_THROUGH(mop_prune_params, progress_user));
    CHECK_INIT(aggregator, MOP_SIZE_THROUGH(mop_aggregator_params, seed));
    CHECK_INIT(rdp, MOP_SIZE_THROUGH(mop_rdp_params, n_orders));
    CHECK_INIT(secagg, MOP_SIZE_THROUGH(mop_secagg_params, min_survivors));
    /* gate pre-training: the macro and the 0.2.0 one-argument symbol agree */
    mop_gate_pretrain_params g1, g2;
    memset(&g1, 0x5a, sizeof g1);
    memset(&g2, 0x33, sizeof g2);
    assert_int_equal(mop_gate_pretrain_params_init(&g1), MOP_OK);
    assert_int_equal((mop_gate_pretrain_params_init)(&g2), MOP_OK);
    assert_memory_equal(&g1, &g2, sizeof g1);
    assert_int_equal((mop_gate_pretrain_params_init)(NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_gate_pretrain_params_init_sized(&g1, 4), MOP_E_INVALID_ARG);
}
#pragma GCC diagnostic pop

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names_are_distinct),
        cmocka_unit_test(test_last_error_is_set_and_prefixed),
        cmocka_unit_test(test_fail_may_quote_last_error),
        cmocka_unit_test(test_version_matches_header),
        cmocka_unit_test(test_allocator_hooks),
        cmocka_unit_test(test_overflow_checks),
        cmocka_unit_test(test_params_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
