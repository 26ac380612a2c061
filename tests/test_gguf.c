/* GGUF reader: a valid image round-trips; every truncation, corrupted header
 * byte, bad alignment, out-of-range offset, overflowing dims, unknown type,
 * duplicate name, nested array and huge count is rejected with the exact
 * status and never read out of bounds. Images are built in memory with
 * tests/gguf_builder.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gguf.h"
#include "gguf_builder.h"
#include "internal.h"

/* A small image with every metadata type and a few tensor types. */
static void build_small(gguf_builder *b)
{
    gb_init(b);
    gb_kv_str(b, "general.architecture", "llama");
    gb_kv_u32(b, "llama.block_count", 2);
    gb_key(b, "k.u8", GB_U8), gb_u8(&b->kv, 200);
    gb_key(b, "k.i8", GB_I8), gb_u8(&b->kv, (uint8_t)(int8_t)-5);
    gb_key(b, "k.u16", GB_U16), gb_u16(&b->kv, 60000);
    gb_key(b, "k.i16", GB_I16), gb_u16(&b->kv, (uint16_t)(int16_t)-300);
    gb_kv_i32(b, "k.i32", -70000);
    gb_kv_u64(b, "k.u64", (uint64_t)1 << 40);
    gb_kv_u64(b, "k.u64big", UINT64_MAX);
    gb_key(b, "k.i64", GB_I64), gb_u64(&b->kv, (uint64_t)(int64_t)-3);
    gb_kv_f32(b, "k.f32", 0.25f);
    gb_key(b, "k.f64", GB_F64);
    double dv = -1.5e300;
    uint64_t du;
    memcpy(&du, &dv, 8);
    gb_u64(&b->kv, du);
    gb_kv_bool(b, "k.bool", 1);
    const char *strs[] = {"alpha", "", "gamma"};
    gb_kv_arr_str(b, "k.strs", strs, 3);
    const int32_t ints[] = {7, -8, 9, 10};
    gb_kv_arr_i32(b, "k.ints", ints, 4);
    gb_kv_arr_str(b, "k.empty", strs, 0);

    float f[6] = {1, 2, 3, 4, 5, 6};
    int64_t d23[2] = {2, 3};
    gb_tensor_add(b, "t.f32", 0, 2, d23, f, sizeof f);
    int64_t d64[1] = {64};
    uint32_t seed = 7;
    gb_fill(gb_tensor_add(b, "t.q8", 8, 1, d64, NULL, 0), 1, 64, &seed);
    int64_t d232[3] = {2, 1, 32};
    gb_fill(gb_tensor_add(b, "t.q41", 3, 3, d232, NULL, 0), 2, 32, &seed);
}

static mop_status parse(const uint8_t *img, size_t size)
{
    gguf_file *g = NULL;
    mop_status st = gguf_parse(img, size, "test", &g);
    if (st == MOP_OK) {
        /* exercise everything a consumer would touch */
        for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
            const mop_src_tensor *t = gguf_tensor(g, i);
            assert_ptr_equal(gguf_find_tensor(g, t->name), t);
            assert_true((const uint8_t *)t->data + t->nbytes <= img + size);
        }
        gguf_free(g);
    } else {
        assert_null(g);
    }
    return st;
}

static void test_parse_valid(void **state)
{
    (void)state;
    gguf_builder b;
    build_small(&b);
    size_t size;
    uint8_t *img = gb_finish(&b, &size);
    gguf_file *g = NULL;
    assert_int_equal(gguf_parse(img, size, "small", &g), MOP_OK);
    assert_int_equal(gguf_version(g), 3);

    int64_t v;
    int found;
    struct {
        const char *key;
        int64_t want;
    } ints[] = {{"llama.block_count", 2}, {"k.u8", 200},  {"k.i8", -5},
                {"k.u16", 60000},         {"k.i16", -300}, {"k.i32", -70000},
                {"k.u64", (int64_t)1 << 40}, {"k.i64", -3}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        v = 0;
        assert_int_equal(gguf_get_int(g, ints[i].key, &v, &found), MOP_OK);
        assert_int_equal(found, 1);
        assert_int_equal(v, ints[i].want);
    }
    v = 99;
    assert_int_equal(gguf_get_int(g, "absent", &v, &found), MOP_OK);
    assert_int_equal(found, 0);
    assert_int_equal(v, 99);
    assert_int_equal(gguf_get_int(g, "k.u64big", &v, &found), MOP_E_FORMAT);
    assert_int_equal(gguf_get_int(g, "k.f32", &v, &found), MOP_E_FORMAT);
    assert_int_equal(gguf_get_int(g, "k.strs", &v, &found), MOP_E_FORMAT);

    double x;
    assert_int_equal(gguf_get_float(g, "k.f32", &x, &found), MOP_OK);
    assert_true(found && x == 0.25);
    assert_int_equal(gguf_get_float(g, "k.f64", &x, &found), MOP_OK);
    assert_true(found && x == -1.5e300);
    assert_int_equal(gguf_get_float(g, "k.u8", &x, &found), MOP_E_FORMAT);

    int bv = 0;
    assert_int_equal(gguf_get_bool(g, "k.bool", &bv, &found), MOP_OK);
    assert_true(found && bv == 1);
    assert_int_equal(gguf_get_bool(g, "k.u8", &bv, &found), MOP_E_FORMAT);

    const char *s;
    size_t len;
    assert_int_equal(gguf_get_str(g, "general.architecture", &s, &len, &found), MOP_OK);
    assert_true(found && len == 5 && memcmp(s, "llama", 5) == 0);
    assert_int_equal(gguf_get_str(g, "k.i32", &s, &len, &found), MOP_E_FORMAT);

    gguf_array a;
    assert_int_equal(gguf_get_array(g, "k.strs", &a, &found), MOP_OK);
    assert_true(found);
    assert_int_equal(a.elem_type, GGUF_TYPE_STRING);
    assert_int_equal(a.n, 3);
    const char *want[] = {"alpha", "", "gamma"};
    for (uint64_t i = 0; i < 3; i++) {
        assert_int_equal(gguf_array_str(&a, i, &s, &len), MOP_OK);
        assert_int_equal(len, strlen(want[i]));
        assert_memory_equal(s, want[i], len);
    }
    assert_int_equal(gguf_array_str(&a, 3, &s, &len), MOP_E_RANGE);
    assert_int_equal(gguf_get_array(g, "k.ints", &a, &found), MOP_OK);
    assert_int_equal(a.elem_type, GGUF_TYPE_INT32);
    assert_int_equal(a.n, 4);
    int32_t i2;
    memcpy(&i2, (const uint8_t *)a.data + 4, 4);
    assert_int_equal(i2, -8);
    assert_int_equal(gguf_array_str(&a, 0, &s, &len), MOP_E_FORMAT);
    assert_int_equal(gguf_get_array(g, "k.empty", &a, &found), MOP_OK);
    assert_int_equal(a.n, 0);
    assert_int_equal(gguf_get_array(g, "k.bool", &a, &found), MOP_E_FORMAT);

    /* tensors: file order, dims reversed to libmop order, data where written */
    assert_int_equal(gguf_n_tensors(g), 3);
    const mop_src_tensor *t = gguf_tensor(g, 0);
    assert_string_equal(t->name, "t.f32");
    assert_int_equal(t->ftype, MOP_FT_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->dims[0], 2);
    assert_int_equal(t->dims[1], 3);
    assert_int_equal(t->nbytes, 24);
    assert_ptr_equal(t->data, img + b.data_off[0]);
    assert_int_equal((uintptr_t)((const uint8_t *)t->data - img) % 32, 0);
    float f4;
    memcpy(&f4, (const uint8_t *)t->data + 12, 4);
    assert_true(f4 == 4.0f);
    t = gguf_find_tensor(g, "t.q41");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->dims[0], 2);
    assert_int_equal(t->dims[1], 1);
    assert_int_equal(t->dims[2], 32);
    assert_int_equal(t->nbytes, 40);
    assert_ptr_equal(t->data, img + b.data_off[2]);
    assert_int_equal(gguf_find_tensor(g, "t.q8")->nbytes, 68);
    assert_null(gguf_find_tensor(g, "t.q"));
    assert_null(gguf_find_tensor(g, "t.q80"));
    assert_null(gguf_tensor(g, 3));
    assert_null(gguf_tensor(g, -1));
    gguf_free(g);
    gguf_free(NULL);
    free(img);
    gb_release(&b);
    assert_int_equal(mop_alloc_live(), 0);
}

static void test_version2_and_alignment(void **state)
{
    (void)state;
    gguf_builder b;
    build_small(&b);
    b.version = 2;
    b.align = 64;
    gb_kv_u32(&b, "general.alignment", 64);
    size_t size;
    uint8_t *img = gb_finish(&b, &size);
    gguf_file *g = NULL;
    assert_int_equal(gguf_parse(img, size, "v2", &g), MOP_OK);
    assert_int_equal(gguf_version(g), 2);
    for (int i = 0; i < 3; i++) {
        assert_ptr_equal(gguf_tensor(g, i)->data, img + b.data_off[i]);
        assert_int_equal(b.data_off[i] % 64, 0);
    }
    gguf_free(g);
    free(img);
    gb_release(&b);
}

static void test_every_truncation_fails(void **state)
{
    (void)state;
    gguf_builder b;
    build_small(&b);
    size_t size;
    uint8_t *img = gb_finish(&b, &size);
    assert_int_equal(parse(img, size), MOP_OK);
    /* the valid image ends with the last tensor's padding; the last tensor
     * ends at data_off[2] + 40, so any shorter prefix must fail */
    size_t min_ok = b.data_off[2] + 40;
    for (size_t n = 0; n < size; n++) {
        /* a fresh exact-size copy so a read past the end is a real overread */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, img, n);
        mop_status st = parse(cut, n);
        if (n < min_ok)
            assert_int_equal(st, MOP_E_FORMAT);
        else
            assert_int_equal(st, MOP_OK);
        free(cut);
    }
    free(img);
    gb_release(&b);
    assert_int_equal(mop_alloc_live(), 0);
}

static void test_flipped_header_bytes(void **state)
{
    (void)state;
    gguf_builder b;
    build_small(&b);
    size_t size;
    uint8_t *img = gb_finish(&b, &size);
    int counts[3] = {0, 0, 0};
    for (size_t i = 0; i < b.infos_end; i++) {
        for (int bit = 0; bit < 8; bit++) {
            uint8_t *c = malloc(size);
            memcpy(c, img, size);
            c[i] ^= (uint8_t)(1u << bit);
            mop_status st = parse(c, size);
            assert_true(st == MOP_OK || st == MOP_E_FORMAT || st == MOP_E_UNSUPPORTED);
            counts[st == MOP_OK ? 0 : st == MOP_E_FORMAT ? 1 : 2]++;
            free(c);
        }
        /* all bits of the byte at once */
        uint8_t *c = malloc(size);
        memcpy(c, img, size);
        c[i] ^= 0xff;
        mop_status st = parse(c, size);
        assert_true(st == MOP_OK || st == MOP_E_FORMAT || st == MOP_E_UNSUPPORTED);
        free(c);
    }
    /* the magic and counts always matter; string contents often do not */
    assert_true(counts[0] > 0 && counts[1] > 0 && counts[2] > 0);
    free(img);
    gb_release(&b);
    assert_int_equal(mop_alloc_live(), 0);
}

/* Build, let `edit` change the builder, serialise and parse; returns the status. */
static mop_status parse_edited(void (*edit)(gguf_builder *), const char *expect_msg)
{
    gguf_builder b;
    build_small(&b);
    edit(&b);
    size_t size;
    uint8_t *img = gb_finish(&b, &size);
    mop_status st = parse(img, size);
    if (expect_msg && !strstr(mop_last_error(), expect_msg)) {
        print_error("message \"%s\" lacks \"%s\"\n", mop_last_error(), expect_msg);
        fail();
    }
    free(img);
    gb_release(&b);
    assert_int_equal(mop_alloc_live(), 0);
    return st;
}

static void ed_v1(gguf_builder *b) { b->version = 1; }
static void ed_v4(gguf_builder *b) { b->version = 4; }
static void ed_v_big(gguf_builder *b) { b->version = 0x03000000; }
static void ed_align48(gguf_builder *b) { gb_kv_u32(b, "general.alignment", 48); }
static void ed_align0(gguf_builder *b) { gb_kv_u32(b, "general.alignment", 0); }
static void ed_align_str(gguf_builder *b) { gb_kv_str(b, "general.alignment", "32"); }
static void ed_offset_unaligned(gguf_builder *b)
{
    b->t[1].has_offset = 1;
    b->t[1].offset = 40;
}
static void ed_offset_beyond(gguf_builder *b)
{
    b->t[2].has_offset = 1;
    b->t[2].offset = 1 << 20;
}
static void ed_offset_overflow(gguf_builder *b)
{
    b->t[2].has_offset = 1;
    b->t[2].offset = UINT64_MAX - 31;
}
static void ed_overlap(gguf_builder *b)
{
    b->t[1].has_offset = 1;
    b->t[1].offset = 0; /* on top of t.f32 */
}
static void ed_dims_overflow(gguf_builder *b)
{
    b->t[0].n_dims = 3;
    b->t[0].ne[0] = (uint64_t)1 << 40;
    b->t[0].ne[1] = (uint64_t)1 << 40;
    b->t[0].ne[2] = 1;
}
static void ed_dims_nbytes_overflow(gguf_builder *b)
{
    /* count fits in int64 but 4 * count does not fit in uint64 ... nor the file */
    b->t[0].n_dims = 2;
    b->t[0].ne[0] = (uint64_t)1 << 31;
    b->t[0].ne[1] = (uint64_t)1 << 31;
}
static void ed_dim_zero(gguf_builder *b) { b->t[0].ne[1] = 0; }
static void ed_dim_neg(gguf_builder *b) { b->t[0].ne[0] = UINT64_MAX; }
static void ed_ndims5(gguf_builder *b)
{
    b->t[0].n_dims = 5; /* the builder writes 5 dims; the parser must stop at n_dims */
}
static void ed_ndims0(gguf_builder *b) { b->t[0].n_dims = 0; }
static void ed_type_q6k(gguf_builder *b) { b->t[2].type = 14; }
static void ed_type_huge(gguf_builder *b) { b->t[0].type = 0xdeadbeef; }
static void ed_q8_partial_block(gguf_builder *b)
{
    b->t[1].ne[0] = 48; /* 48 is not a multiple of 32 */
}
static void ed_dup_tensor(gguf_builder *b) { snprintf(b->t[2].name, sizeof b->t[2].name, "t.f32"); }
static void ed_dup_key(gguf_builder *b) { gb_kv_u32(b, "k.i32", 3); }
static void ed_nested(gguf_builder *b)
{
    gb_key(b, "k.nested", GB_ARR);
    gb_u32(&b->kv, GB_ARR);
    gb_u64(&b->kv, 1);
    gb_u32(&b->kv, GB_U8);
    gb_u64(&b->kv, 1);
    gb_u8(&b->kv, 1);
}
static void ed_huge_n_kv(gguf_builder *b) { b->n_kv_override = (int64_t)1 << 60; }
static void ed_huge_n_tensors(gguf_builder *b) { b->n_t_override = (int64_t)1 << 58; }
static void ed_more_kv(gguf_builder *b) { b->n_kv_override = (int64_t)b->n_kv + 1; }
static void ed_huge_string(gguf_builder *b)
{
    gb_key(b, "k.big", GB_STR);
    gb_u64(&b->kv, UINT64_MAX - 4);
}
static void ed_huge_array(gguf_builder *b)
{
    gb_key(b, "k.bigarr", GB_ARR);
    gb_u32(&b->kv, GB_U64);
    gb_u64(&b->kv, (uint64_t)1 << 61); /* 8 * n overflows 64 bits */
}
static void ed_huge_str_array(gguf_builder *b)
{
    gb_key(b, "k.bigstrs", GB_ARR);
    gb_u32(&b->kv, GB_STR);
    gb_u64(&b->kv, UINT64_MAX);
}
static void ed_bad_value_type(gguf_builder *b) { gb_key(b, "k.bad", 13), gb_u32(&b->kv, 0); }
static void ed_bad_elem_type(gguf_builder *b)
{
    gb_key(b, "k.badarr", GB_ARR);
    gb_u32(&b->kv, 99);
    gb_u64(&b->kv, 0);
}
static void ed_empty_name(gguf_builder *b) { b->t[0].name[0] = 0; }

static void test_rejects(void **state)
{
    (void)state;
    assert_int_equal(parse_edited(ed_v1, "version 1"), MOP_E_UNSUPPORTED);
    assert_int_equal(parse_edited(ed_v4, "version 4"), MOP_E_UNSUPPORTED);
    assert_int_equal(parse_edited(ed_v_big, "version"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_align48, "general.alignment = 48"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_align0, "general.alignment = 0"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_align_str, "general.alignment"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_offset_unaligned, "tensor t.q8: data offset 40"),
                     MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_offset_beyond, "tensor t.q41: data ["), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_offset_beyond, "beyond end of file"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_offset_overflow, "tensor t.q41"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_overlap, "overlap"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_dims_overflow, "tensor t.f32: element count overflows"),
                     MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_dims_nbytes_overflow, "tensor t.f32"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_dim_zero, "tensor t.f32: dimension 1 is 0"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_dim_neg, "tensor t.f32"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_ndims5, "5 dimensions"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_ndims0, "0 dimensions"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_type_q6k, "tensor t.q41: type id 14"), MOP_E_UNSUPPORTED);
    assert_int_equal(parse_edited(ed_type_huge, "type id 3735928559"), MOP_E_UNSUPPORTED);
    assert_int_equal(parse_edited(ed_q8_partial_block, "row length 48"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_dup_tensor, "duplicate tensor name t.f32"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_dup_key, "duplicate metadata key k.i32"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_nested, "k.nested: nested arrays"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_huge_n_kv, "metadata entries cannot fit"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_huge_n_tensors, "tensors cannot fit"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_more_kv, NULL), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_huge_string, "truncated"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_huge_array, "k.bigarr: array of"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_huge_str_array, "k.bigstrs: array of"), MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_bad_value_type, "k.bad: unknown value type 13"),
                     MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_bad_elem_type, "unknown array element type 99"),
                     MOP_E_FORMAT);
    assert_int_equal(parse_edited(ed_empty_name, "empty name"), MOP_E_FORMAT);
}

static void test_bad_magic_and_args(void **state)
{
    (void)state;
    gguf_file *g = NULL;
    assert_int_equal(gguf_parse("GGUX\3\0\0\0", 8, "x", &g), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "x: not a GGUF file"));
    assert_int_equal(gguf_parse(NULL, 0, "empty", &g), MOP_E_FORMAT);
    assert_int_equal(gguf_parse("GGUF", 4, NULL, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(gguf_parse(NULL, 10, NULL, &g), MOP_E_INVALID_ARG);
    /* a header with no metadata and no tensors is a valid (empty) file */
    uint8_t hdr[24] = {'G', 'G', 'U', 'F', 3};
    assert_int_equal(gguf_parse(hdr, sizeof hdr, NULL, &g), MOP_OK);
    assert_int_equal(gguf_n_tensors(g), 0);
    assert_null(gguf_find_tensor(g, "x"));
    int64_t v;
    int found = 1;
    assert_int_equal(gguf_get_int(g, "general.alignment", &v, &found), MOP_OK);
    assert_int_equal(found, 0);
    gguf_free(g);
    assert_int_equal(mop_alloc_live(), 0);
}

/* Many keys and tensors: the lookups are indexed, and all still found. */
static void test_many_entries(void **state)
{
    (void)state;
    gguf_builder b;
    gb_init(&b);
    char key[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "key.%04d", (i * 7919) % 2000);
        gb_kv_u32(&b, key, (uint32_t)((i * 7919) % 2000));
    }
    for (int i = 0; i < GB_MAX_TENSORS; i++) {
        snprintf(key, sizeof key, "w.%02d", GB_MAX_TENSORS - 1 - i);
        int64_t dim = 1 + i;
        float z[64] = {0};
        gb_tensor_add(&b, key, 0, 1, &dim, z, (size_t)dim * 4);
    }
    size_t size;
    uint8_t *img = gb_finish(&b, &size);
    gguf_file *g = NULL;
    assert_int_equal(gguf_parse(img, size, "many", &g), MOP_OK);
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "key.%04d", i);
        int64_t v;
        int found;
        assert_int_equal(gguf_get_int(g, key, &v, &found), MOP_OK);
        assert_true(found);
        assert_int_equal(v, i);
    }
    for (int i = 0; i < GB_MAX_TENSORS; i++) {
        snprintf(key, sizeof key, "w.%02d", i);
        const mop_src_tensor *t = gguf_find_tensor(g, key);
        assert_non_null(t);
        assert_int_equal(t->dims[0], GB_MAX_TENSORS - i);
    }
    gguf_free(g);
    free(img);
    gb_release(&b);
}

/* With MOP_WRITE_FUZZ_SEEDS=dir, write the seed corpus for fuzz_gguf. */
static void write_seed(const char *dir, const char *name, const uint8_t *img, size_t size)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(img, 1, size, f), size);
    fclose(f);
}

static void test_write_fuzz_seeds(void **state)
{
    (void)state;
    const char *dir = getenv("MOP_WRITE_FUZZ_SEEDS");
    if (!dir || !*dir)
        skip();
    gguf_builder b;
    size_t size;
    uint8_t *img;
    build_small(&b);
    img = gb_finish(&b, &size);
    write_seed(dir, "small_v3.gguf", img, size);
    free(img);
    gb_release(&b);

    build_small(&b);
    b.version = 2;
    b.align = 64;
    gb_kv_u32(&b, "general.alignment", 64);
    img = gb_finish(&b, &size);
    write_seed(dir, "small_v2_align64.gguf", img, size);
    free(img);
    gb_release(&b);

    gb_init(&b);
    tiny_opts o = tiny_defaults();
    o.n_layer = 1;
    o.n_ff = 32;
    o.type_q = o.type_k = o.type_v = o.type_o = o.type_gate = o.type_up = o.type_down =
        o.type_embd = 2; /* Q4_0 keeps the seed small */
    tiny_llama(&b, &o);
    img = gb_finish(&b, &size);
    write_seed(dir, "tiny_llama.gguf", img, size);
    free(img);
    gb_release(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_version2_and_alignment),
        cmocka_unit_test(test_every_truncation_fails),
        cmocka_unit_test(test_flipped_header_bytes),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_bad_magic_and_args),
        cmocka_unit_test(test_many_entries),
        cmocka_unit_test(test_write_fuzz_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
