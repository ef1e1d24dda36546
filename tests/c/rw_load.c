/* rw_lib.c under load while its fix is applied and reverted: make test's
 * slice of make realworld (tests/test_realworld.py), with realworld's
 * load_common.h and realworld/rwlib.py driving it as for zlib and SQLite.
 *
 * usage: rw_load THREADS       load: workers check checksums and lengths
 *                              the fix does not change, a probe calls
 *                              rw_accepts(100), where it does; "ready",
 *                              then until stdin closes, then one JSON line
 *        rw_load --work N      N rounds of the workers' checks, one thread:
 *                              the workload that is timed; exit 0 if right */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load_common.h"

unsigned rw_checksum(const unsigned char *data, int len);
int rw_accepts(int len);

/* FNV-1a of "123456789": the published check value. */
#define CHECK_VALUE 0xbb86b11cu

static int one_round(void)
{
    if (rw_checksum((const unsigned char *)"123456789", 9) != CHECK_VALUE)
        return 1;
    for (int len = 0; len < 100; len++)
        if (!rw_accepts(len))
            return 1;
    return rw_accepts(-1) || rw_accepts(101);
}

static void *worker(void *arg)
{
    (void)arg;
    int first = 1;
    while (!atomic_load(&stop)) {
        atomic_fetch_add(&ops, 1);
        if (one_round())
            atomic_fetch_add(&wrong, 1);
        if (first) {
            first = 0;
            atomic_fetch_add(&started, 1);
        }
    }
    return NULL;
}

/* rw_accepts(100): 1 with the old version, 0 with the fix. */
static void *probe(void *arg)
{
    (void)arg;
    int last = -1, first = 1;
    while (!atomic_load(&stop)) {
        int version = !rw_accepts(100);
        atomic_fetch_add(&probe_ops, 1);
        atomic_fetch_add(version ? &new_seen : &old_seen, 1);
        if (last >= 0 && version != last)
            atomic_fetch_add(&switches, 1);
        last = version;
        if (first) {
            first = 0;
            atomic_fetch_add(&started, 1);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--work") == 0) {
        long rounds = atol(argv[2]);
        for (long i = 0; i < rounds; i++)
            if (one_round())
                return 1;
        return 0;
    }
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    if (threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "rw_load: THREADS must be 1..%d\n", MAX_THREADS);
        return 2;
    }
    return run_load(threads, worker, probe);
}
