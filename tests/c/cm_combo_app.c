/* Case 3: NTHREADS threads call combo() in a loop and classify every
 * activation as all-old (111), all-new (222) or mixed.
 *   sync -> waits until every thread has completed two more activations
 *           (so each ran one activation that started after the command)
 *           and prints the last results
 *   stop -> stops the threads and prints the totals */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "progress.h"

#define NTHREADS 3

int combo(unsigned spin);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t progress = PTHREAD_COND_INITIALIZER;
static int stop;
static long done[NTHREADS], old_count, new_count, mixed_count;
static int last[NTHREADS], first_mixed;

static void *loop(void *arg)
{
    int id = (int)(long)arg;
    for (;;) {
        int r = combo(2000);
        pthread_mutex_lock(&lock);
        if (r == 111)
            old_count++;
        else if (r == 222)
            new_count++;
        else if (mixed_count++ == 0)
            first_mixed = r;
        last[id] = r;
        done[id]++;
        pthread_cond_broadcast(&progress);
        int leave = stop;
        pthread_mutex_unlock(&lock);
        if (leave)
            return NULL;
    }
}

static void sync_threads(void)
{
    if (wait_rounds(&lock, &progress, done, NTHREADS, 2) != 0) {
        printf("sync timeout\n");
        return;
    }
    printf("last %d %d %d\n", last[0], last[1], last[2]);
    pthread_mutex_unlock(&lock);
}

int main(void)
{
    pthread_t threads[NTHREADS];
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long i = 0; i < NTHREADS; i++)
        pthread_create(&threads[i], NULL, loop, (void *)i);
    printf("running\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "sync", 4) == 0) {
            sync_threads();
        } else if (strncmp(line, "stop", 4) == 0) {
            pthread_mutex_lock(&lock);
            stop = 1;
            pthread_mutex_unlock(&lock);
            for (int i = 0; i < NTHREADS; i++)
                pthread_join(threads[i], NULL);
            printf("old=%ld new=%ld mixed=%ld first_mixed=%d\n", old_count, new_count,
                   mixed_count, first_mixed);
        }
    }
    return 0;
}
