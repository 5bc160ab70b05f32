/* SHA-256 (FIPS 180-4), enough for the launcher to check its runtime archive against its key. */
#ifndef PACKER_SHA256_H
#define PACKER_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
    uint32_t h[8];
    uint64_t bytes;          /* message length so far */
    unsigned char block[64]; /* the partial block */
    size_t used;
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t n);
/* Writes the digest as 64 lowercase hex characters and a NUL to hex[65]. */
void sha256_hex(struct sha256 *s, char hex[65]);

#endif
