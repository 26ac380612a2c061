/* libFuzzer: mop_update_parse on arbitrary bytes. Every input must give
 * MOP_OK or an error status, never a crash, leak or out-of-bounds read; a
 * parsed update must serialize back to exactly the input bytes.
 *
 * A random blob almost never carries a valid SHA-256, which would stop the
 * fuzzer at the checksum. So the first input byte is a mode: odd = recompute
 * the trailer over the rest before parsing (explores everything behind the
 * checksum: names, shapes, NaN/Inf, duplicates), even = parse as is. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"
#include "libmop/mop_fed.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const int reseal = data[0] & 1;
    data++, size--;
    /* A private copy of exactly `size` bytes so ASan sees any over-read. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    if (reseal && size >= 32)
        crypto_hash_sha256(copy + size - 32, copy, size - 32);
    long live = mop_alloc_live();
    mop_update *u = NULL;
    mop_status st = mop_update_parse(copy, size, &u);
    if (st == MOP_OK) {
        size_t n = 0;
        if (mop_update_serialize(u, NULL, 0, &n) != MOP_OK || n != size)
            abort();
        uint8_t *again = malloc(n ? n : 1);
        if (!again || mop_update_serialize(u, again, n, &n) != MOP_OK || memcmp(again, copy, n) != 0)
            abort();
        free(again);
        mop_update_free(u);
    } else if (u) {
        abort();
    }
    if (mop_alloc_live() != live)
        abort();
    free(copy);
    return 0;
}
