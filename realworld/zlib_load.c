/* zlib under load while its inflateSync() fix is applied and reverted.
 *
 * usage: zlib_load THREADS
 *
 * THREADS workers compress and uncompress pseudo-random, compressible
 * buffers of varying size and level (round trip: same length, same bytes,
 * same crc32 and adler32 as computed before compressing) and check two
 * known checksums each round.  One probe thread calls inflateSync() on a
 * crafted stream where the fix changes the outcome (sync_probe()): it counts
 * the outcomes of the old and of the fixed version, and how often the
 * outcome switched.  Any other outcome is a wrong result.
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

#include "load_common.h"
#include <zlib.h>

#define MAX_LEN 65536


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

/* inflateSync() with the start of a sync marker held in the bit buffer:
 * inflatePrime() puts 5 bits of a partly used byte (1s) and 16 zero bits
 * there; the input holds the rest of the marker (ff ff), then a final
 * stored block with "hello".  The fixed version drops the 5 bits, finds
 * 00 00 in the bit buffer and the marker, and inflate() then gives
 * "hello"; 1.2.13 searches the wrong bytes and answers Z_DATA_ERROR.
 * Returns 1 for the fixed version, 0 for the old one, -1 otherwise. */
static int sync_probe(void)
{
    static const unsigned char input[] = {0xff, 0xff, 0x01, 0x05, 0x00, 0xfa, 0xff,
                                          'h', 'e', 'l', 'l', 'o'};
    unsigned char out[16];
    z_stream s;
    int version = -1;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, -15) != Z_OK)
        return -2;
    if (inflatePrime(&s, 5, 0x1f) != Z_OK || inflatePrime(&s, 16, 0) != Z_OK) {
        inflateEnd(&s);
        return -2;
    }
    s.next_in = (Bytef *)input;
    s.avail_in = sizeof input;
    int r = inflateSync(&s);
    if (r == Z_DATA_ERROR) {
        version = 0;
    } else if (r == Z_OK) {
        s.next_out = out;
        s.avail_out = sizeof out;
        if (inflate(&s, Z_FINISH) == Z_STREAM_END && s.total_out == 5
            && memcmp(out, "hello", 5) == 0)
            version = 1;
    }
    inflateEnd(&s);
    return version;
}

static void *probe(void *arg)
{
    (void)arg;
    int last = -1, first = 1;
    while (!atomic_load(&stop)) {
        int version = sync_probe();
        atomic_fetch_add(&probe_ops, 1);
        if (version == -2) {
            atomic_fetch_add(&failures, 1);
        } else if (version < 0) {
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
    if (threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "zlib_load: THREADS must be 1..%d\n", MAX_THREADS);
        return 2;
    }
    return run_load(threads, worker, probe);
}
