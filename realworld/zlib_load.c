/* zlib under load while its deflateBound() fix is applied and reverted.
 *
 * usage: zlib_load THREADS
 *
 * THREADS workers compress and uncompress pseudo-random, compressible
 * buffers of varying size and level (round trip: same length, same bytes,
 * same crc32 and adler32 as computed before compressing) and check two
 * known checksums each round.  One probe thread calls deflateBound() for
 * level 0 and memLevel 9, where the fix changes the answer: it counts the
 * answers of the old and of the fixed version, and how often the answer
 * switched.  Any other answer is a wrong result.
 *
 * Prints "ready" once every thread has completed a round, runs until stdin
 * is closed, then prints one JSON line of counters and exits 0 only if no
 * operation failed and no result was wrong.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define MAX_THREADS 64
#define MAX_LEN 65536
#define PROBE_LEN 100000UL

static atomic_int stop;
static atomic_int started;
static atomic_ulong ops, failures, wrong, old_seen, new_seen, switches;

static uint64_t next_random(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* Text-like data: words from a small alphabet, so every level compresses. */
static void fill(unsigned char *buf, size_t len, uint64_t *state)
{
    static const char alphabet[] = "abcdefghij klmnop\n";
    for (size_t i = 0; i < len; i++) {
        uint64_t r = next_random(state);
        buf[i] = (r & 3) ? (unsigned char)alphabet[r % (sizeof alphabet - 1)]
                         : (unsigned char)(r >> 8);
    }
}

static int known_checksums(void)
{
    /* The published check values of CRC-32 and Adler-32. */
    return crc32(0L, (const Bytef *)"123456789", 9) == 0xCBF43926UL
        && adler32(1L, (const Bytef *)"Wikipedia", 9) == 0x11E60398UL;
}

static int round_trip(unsigned char *in, unsigned char *comp, unsigned char *out,
                      uint64_t *state)
{
    uLong len = 1 + next_random(state) % MAX_LEN;
    int level = (int)(next_random(state) % 10);
    fill(in, len, state);
    uLong crc = crc32(0L, in, (uInt)len), adler = adler32(1L, in, (uInt)len);
    uLongf comp_len = compressBound(len), out_len = MAX_LEN;
    if (compress2(comp, &comp_len, in, len, level) != Z_OK
        || uncompress(out, &out_len, comp, comp_len) != Z_OK)
        return -1;
    if (out_len != len || memcmp(in, out, len) != 0
        || crc32(0L, out, (uInt)out_len) != crc || adler32(1L, out, (uInt)out_len) != adler
        || !known_checksums())
        return 1;
    return 0;
}

static void *worker(void *arg)
{
    uint64_t state = 0x9E3779B97F4A7C15ULL * (uintptr_t)arg + 1;
    unsigned char *in = malloc(MAX_LEN), *out = malloc(MAX_LEN);
    unsigned char *comp = malloc(compressBound(MAX_LEN));
    int first = 1;
    if (!in || !out || !comp) {
        atomic_fetch_add(&failures, 1);
        return NULL;
    }
    while (!atomic_load(&stop)) {
        int r = round_trip(in, comp, out, &state);
        atomic_fetch_add(&ops, 1);
        if (r < 0)
            atomic_fetch_add(&failures, 1);
        else if (r > 0)
            atomic_fetch_add(&wrong, 1);
        if (first) {
            first = 0;
            atomic_fetch_add(&started, 1);
        }
    }
    free(in);
    free(out);
    free(comp);
    return NULL;
}

/* What deflateBound() answers for PROBE_LEN bytes at level 0 with memLevel 9
 * (hash_bits 16 >= w_bits 15), zlib wrapper, nothing compressed yet (6 bytes
 * of wrapper): 1.2.13 takes the fixed-block bound, the fix the stored-block
 * bound, as level 0 only writes stored blocks. */
static uLong fixed_bound(uLong n) { return n + (n >> 3) + (n >> 8) + (n >> 9) + 4 + 6; }
static uLong stored_bound(uLong n) { return n + (n >> 5) + (n >> 7) + (n >> 11) + 7 + 6; }

static void *probe(void *arg)
{
    (void)arg;
    int last = -1, first = 1;
    while (!atomic_load(&stop)) {
        z_stream s;
        memset(&s, 0, sizeof s);
        if (deflateInit2(&s, 0, Z_DEFLATED, 15, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
            atomic_fetch_add(&failures, 1);
            continue;
        }
        uLong bound = deflateBound(&s, PROBE_LEN);
        deflateEnd(&s);
        int version = bound == fixed_bound(PROBE_LEN) ? 0 : bound == stored_bound(PROBE_LEN) ? 1 : -1;
        atomic_fetch_add(&ops, 1);
        if (version < 0) {
            atomic_fetch_add(&wrong, 1);
        } else {
            atomic_fetch_add(version ? &new_seen : &old_seen, 1);
            if (last >= 0 && version != last)
                atomic_fetch_add(&switches, 1);
            last = version;
        }
        if (first) {
            first = 0;
            atomic_fetch_add(&started, 1);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    pthread_t tid[MAX_THREADS + 1];
    char buf[256];
    if (threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "zlib_load: THREADS must be 1..%d\n", MAX_THREADS);
        return 2;
    }
    for (int i = 0; i < threads; i++)
        if (pthread_create(&tid[i], NULL, worker, (void *)(uintptr_t)i) != 0)
            return 1;
    if (pthread_create(&tid[threads], NULL, probe, NULL) != 0)
        return 1;
    while (atomic_load(&started) < threads + 1)
        usleep(1000);
    printf("ready\n");
    fflush(stdout);
    while (read(0, buf, sizeof buf) > 0)
        ;
    atomic_store(&stop, 1);
    for (int i = 0; i <= threads; i++)
        pthread_join(tid[i], NULL);
    printf("{\"threads\": %d, \"ops\": %lu, \"failures\": %lu, \"wrong\": %lu, "
           "\"old\": %lu, \"new\": %lu, \"switches\": %lu}\n",
           threads, atomic_load(&ops), atomic_load(&failures), atomic_load(&wrong),
           atomic_load(&old_seen), atomic_load(&new_seen), atomic_load(&switches));
    return atomic_load(&failures) || atomic_load(&wrong);
}
