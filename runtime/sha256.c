/* SHA-256 (FIPS 180-4): of a sealed patch object on the very descriptor that
 * will be loaded, and of the fields a patch id is derived from. */
#include <cpuid.h>
#include <errno.h>
#include <immintrin.h>
#include <string.h>
#include <unistd.h>
#if __has_include(<sys/platform/x86.h>)
#include <sys/platform/x86.h>
#endif

#include "ulp_internal.h"

#define sha256 ulp_sha256

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

/* The portable compression of one 64-byte block: eight variables renamed
 * by the round (shifting an array of them each round made it 115 us for a
 * 15 KB patch object, 8 % of all the CPU of an apply to 4,000 processes). */
static void compress_portable(uint32_t state[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] +
                      w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

/* The same with the SHA extensions of x86 (SHA-NI: about ten times
 * faster), the state kept as the instructions want it: ABEF and CDGH. */
__attribute__((target("sha,sse4.1,ssse3"))) static void compress_sha_ni(uint32_t state[8],
                                                                        const uint8_t *p)
{
    const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[0]), 0xB1);
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[4]), 0x1B);
    __m128i abef = _mm_alignr_epi8(dcba, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, dcba, 0xF0);
    __m128i abef_before = abef, cdgh_before = cdgh, msg[4];
    for (int i = 0; i < 4; i++)
        msg[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), byteswap);
    /* four rounds a step; W[4i..4i+3] is msg[i % 4], and the step makes the
     * words twelve rounds ahead of it (FIPS 180-4's schedule) in its place */
    for (int i = 0; i < 16; i++) {
        __m128i wk = _mm_add_epi32(msg[i & 3], _mm_loadu_si128((const __m128i *)&K[4 * i]));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
        if (i < 12) {
            __m128i next = _mm_sha256msg1_epu32(msg[i & 3], msg[(i + 1) & 3]);
            next = _mm_add_epi32(next, _mm_alignr_epi8(msg[(i + 3) & 3], msg[(i + 2) & 3], 4));
            msg[i & 3] = _mm_sha256msg2_epu32(next, msg[(i + 3) & 3]);
        }
    }
    abef = _mm_add_epi32(abef, abef_before);
    cdgh = _mm_add_epi32(cdgh, cdgh_before);
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, feba, 8));
}

/* 1 if this CPU has the SHA extensions (and the SSE4.1 and SSSE3 they come
 * with), 0 if not, -1 until looked at; a test sets 0 to check the portable
 * code (tests/c/sha256_check.c). */
ULP_HIDDEN int ulp_sha256_sha_ni = -1;

/* From what glibc found at the start of the process (<sys/platform/x86.h>,
 * glibc 2.33): a CPUID instruction of our own traps to the hypervisor in a
 * virtual machine, and three of them cost twice the hash itself in each of
 * 4,000 processes patched at once. */
static int has_sha_ni(void)
{
#if __has_include(<sys/platform/x86.h>)
    return CPU_FEATURE_ACTIVE(SHA) && CPU_FEATURE_ACTIVE(SSE4_1) && CPU_FEATURE_ACTIVE(SSSE3);
#else
    unsigned int a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0 || !(b & bit_SHA))
        return 0;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_1) && (c & bit_SSSE3);
#endif
}

static void compress(struct sha256 *h, const uint8_t *p)
{
    int sha_ni = __atomic_load_n(&ulp_sha256_sha_ni, __ATOMIC_RELAXED);
    if (sha_ni < 0) {
        sha_ni = has_sha_ni();
        __atomic_store_n(&ulp_sha256_sha_ni, sha_ni, __ATOMIC_RELAXED);
    }
    if (sha_ni)
        compress_sha_ni(h->state, p);
    else
        compress_portable(h->state, p);
}

static void update(struct sha256 *h, const uint8_t *data, size_t n)
{
    h->length += n;
    if (h->used > 0) {
        size_t take = 64 - h->used < n ? 64 - h->used : n;
        memcpy(h->block + h->used, data, take);
        h->used += take;
        data += take;
        n -= take;
        if (h->used < 64)
            return;
        compress(h, h->block);
        h->used = 0;
    }
    for (; n >= 64; data += 64, n -= 64)
        compress(h, data);      /* whole blocks straight from the caller's buffer */
    memcpy(h->block, data, n);
    h->used = n;
}

static void finish(struct sha256 *h, uint8_t digest[32])
{
    uint64_t bits = h->length * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    update(h, &pad, 1);
    while (h->used != 56)
        update(h, &zero, 1);
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(bits >> (56 - 8 * i));
    update(h, len, 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++)
            digest[4 * i + j] = (uint8_t)(h->state[i] >> (24 - 8 * j));
}

ULP_HIDDEN void ulp_sha256_init(struct ulp_sha256 *h)
{
    static const struct sha256 initial = {{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                           0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19},
                                          0, {0}, 0};
    *h = initial;
}

ULP_HIDDEN void ulp_sha256_update(struct ulp_sha256 *h, const void *data, size_t n)
{
    update(h, data, n);
}

ULP_HIDDEN void ulp_sha256_final(struct ulp_sha256 *h, uint8_t digest[32])
{
    finish(h, digest);
}

/* Hash the whole file behind FD from its start; -errno on failure. */
ULP_HIDDEN int ulp_sha256_fd(int fd, uint8_t digest[32])
{
    struct sha256 h;
    ulp_sha256_init(&h);
    uint8_t buffer[16384];
    off_t offset = 0;
    for (;;) {
        ssize_t n = pread(fd, buffer, sizeof buffer, offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        update(&h, buffer, (size_t)n);
        offset += n;
    }
    finish(&h, digest);
    return 0;
}
