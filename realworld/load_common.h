/* What the load programs share: the counters their threads keep, and the
 * run itself: start the workers and the probe, say "ready" once all run,
 * go on until stdin closes, then report the counters as one JSON line. */
#ifndef LOAD_COMMON_H
#define LOAD_COMMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#define MAX_THREADS 64

static atomic_int stop, started;
static atomic_ulong ops, probe_ops, failures, wrong, old_seen, new_seen, switches;

/* The exit status: nonzero if any operation failed or gave a wrong result. */
static int run_load(int threads, void *(*worker)(void *), void *(*probe)(void *))
{
    pthread_t tid[MAX_THREADS + 1];
    char buf[256];
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
    printf("{\"threads\": %d, \"ops\": %lu, \"probe_ops\": %lu, \"failures\": %lu, "
           "\"wrong\": %lu, \"old\": %lu, \"new\": %lu, \"switches\": %lu}\n",
           threads, atomic_load(&ops), atomic_load(&probe_ops), atomic_load(&failures),
           atomic_load(&wrong), atomic_load(&old_seen), atomic_load(&new_seen),
           atomic_load(&switches));
    return atomic_load(&failures) || atomic_load(&wrong);
}

#endif
