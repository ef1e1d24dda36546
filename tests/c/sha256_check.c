/* The runtime's SHA-256 (runtime/sha256.c, linked in) of standard input,
 * fed to it in pieces of 1, 2, 3, ... bytes, so that blocks are split
 * across updates in every way.  Argument "portable": the code without the
 * SHA extensions even where the CPU has them.  Prints the digest in hex,
 * then the code that ran ("sha-ni" or "portable"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ulp_internal.h"

int main(int argc, char **argv)
{
    static unsigned char data[1 << 20];
    size_t size = fread(data, 1, sizeof data, stdin);
    if (argc > 1 && strcmp(argv[1], "portable") == 0)
        ulp_sha256_sha_ni = 0;
    struct ulp_sha256 h;
    uint8_t digest[32];
    ulp_sha256_init(&h);
    for (size_t at = 0, piece = 1; at < size; at += piece, piece++)
        ulp_sha256_update(&h, data + at, piece < size - at ? piece : size - at);
    ulp_sha256_final(&h, digest);
    for (int i = 0; i < 32; i++)
        printf("%02x", digest[i]);
    printf("\n%s\n", ulp_sha256_sha_ni ? "sha-ni" : "portable");
    return 0;
}
