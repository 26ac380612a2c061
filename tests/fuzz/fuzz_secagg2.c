/* libFuzzer: the message parsers of secure aggregation with dropout
 * recovery (mop_secagg2_client_step, mop_secagg2_server_receive) on
 * arbitrary bytes, at every stage of a real 3-client round (t = 2). Every
 * input must give MOP_OK or an error status, never a crash, leak or
 * out-of-bounds read; a message the server accepts must leave a round that
 * can still be closed or refused cleanly.
 *
 * First byte: low 3 bits = target (0 server/advertise, 1 client/key list,
 * 2 server/shares, 3 client/forwarded shares, 4 server/masked input,
 * 5 client/survivor list, 6 server/unmasking, 7 = 6); bit 7 = recompute the
 * BLAKE2b-128 trailer so the fuzzer gets past the checksum. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"
#include "libmop/mop_fed.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define N 3
#define LEN 3

/* Run every stage before @p stage for all clients; the server is then at @p stage. */
static int setup(int stage, mop_secagg2_client **c, mop_secagg2_server **s)
{
    mop_secagg_params p;
    mop_secagg_params_init(&p);
    p.n_clients = N;
    p.length = LEN;
    p.min_survivors = 2;
    if (mop_secagg2_server_create(&p, s) != MOP_OK)
        return -1;
    for (int i = 0; i < N; i++)
        if (mop_secagg2_client_create(&p, i, &c[i]) != MOP_OK)
            return -1;
    const float x[LEN] = {0.5f, -1.25f, 3.0f};
    for (int k = 0; k < stage; k++) {
        for (int i = 0; i < N; i++) {
            const uint8_t *in = NULL, *out = NULL;
            size_t n_in = 0, n_out = 0;
            if (k > 0 && mop_secagg2_server_message(*s, i, &in, &n_in) != MOP_OK)
                return -1;
            uint8_t *copy = NULL;
            if (in) {
                copy = malloc(n_in);
                memcpy(copy, in, n_in);
            }
            mop_status st = mop_secagg2_client_step(c[i], copy, n_in, k == 2 ? x : NULL,
                                                    k == 2 ? LEN : 0, &out, &n_out);
            free(copy);
            if (st != MOP_OK || mop_secagg2_server_receive(*s, out, n_out) != MOP_OK)
                return -1;
        }
        if (mop_secagg2_server_advance(*s) != MOP_OK)
            return -1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int target = data[0] & 7, reseal = data[0] >> 7;
    if (target == 7)
        target = 6;
    data++, size--;
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    if (reseal && size >= 16)
        crypto_generichash(copy + size - 16, 16, copy, size - 16, NULL, 0);
    long live = mop_alloc_live();
    mop_secagg2_client *c[N] = {0};
    mop_secagg2_server *s = NULL;
    int server = target % 2 == 0, stage = server ? target / 2 : (target + 1) / 2;
    if (setup(stage, c, &s) == 0) {
        const float x[LEN] = {1.0f, 2.0f, 3.0f};
        const uint8_t *out = NULL;
        size_t n_out = 0;
        if (server) {
            if (mop_secagg2_server_receive(s, copy, size) == MOP_OK)
                (void)mop_secagg2_server_advance(s); /* >= t or refused */
        } else {
            (void)mop_secagg2_client_step(c[1], copy, size, stage == 2 ? x : NULL,
                                          stage == 2 ? LEN : 0, &out, &n_out);
        }
    }
    for (int i = 0; i < N; i++)
        mop_secagg2_client_free(c[i]);
    mop_secagg2_server_free(s);
    if (mop_alloc_live() != live)
        abort(); /* leak */
    free(copy);
    return 0;
}
