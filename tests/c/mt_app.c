/* The program of the tests of a patch of two libraries.
 *
 * THREADS hot threads run chains that cross both libraries nonstop:
 *   a_act -> callback -> b_act -> callback -> a_tag (A re-entered from outside)
 * Every activation checks that it saw one version: A's tags (before, the
 * re-entry, after) are equal, and so are B's.  A chain whose A and B
 * versions differ is counted apart ("crossed": an activation of B begun
 * from inside one of A is an external entry of B; docs/consistency.md).
 *
 * stdin: "sync" waits until every thread has run two more chains and prints
 * the versions of each thread's last chain as "last A/B A/B ..."; "counts"
 * prints the totals; "count" calls B's b_count (a private function of B
 * counting in B's private data) and prints "count=N"; "stop" ends the
 * threads and prints the totals. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "progress.h"

#define THREADS 4
#define MAX_TAGS 16

typedef void (*mt_callback)(int *tags, int *n);
int a_tag(void);
int a_act(mt_callback callback, int *tags, int *n);
int b_act(mt_callback callback, int *tags, int *n);
int b_count(void);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t progress = PTHREAD_COND_INITIALIZER;
static volatile int stopping;
static long chains, mixed_a, mixed_b, crossed, seen[4], done[THREADS];
static int last_a[THREADS], last_b[THREADS];

static void in_b(int *tags, int *n)
{
    tags[(*n)++] = a_tag();
}

static void in_a(int *tags, int *n)
{
    b_act(in_b, tags, n);
}

/* One chain: tags are A, B, A (re-entered), B, A. */
static void chain(int id)
{
    int tags[MAX_TAGS], n = 0;
    a_act(in_a, tags, &n);
    int a_one = n == 5 && tags[2] == tags[0] && tags[4] == tags[0];
    int b_one = n == 5 && tags[3] == tags[1];
    pthread_mutex_lock(&lock);
    chains++;
    mixed_a += !a_one;
    mixed_b += !b_one;
    crossed += tags[0] != tags[1];
    seen[tags[0] & 3]++;
    last_a[id] = tags[0];
    last_b[id] = tags[1];
    done[id]++;
    pthread_cond_broadcast(&progress);
    pthread_mutex_unlock(&lock);
}

static void *hot(void *arg)
{
    int id = (int)(long)arg;
    while (!stopping)
        chain(id);
    return NULL;
}

static void sync_threads(void)
{
    if (wait_rounds(&lock, &progress, done, THREADS, 2) != 0) {
        printf("sync timeout\n");
        return;
    }
    printf("last");
    for (int i = 0; i < THREADS; i++)
        printf(" %d/%d", last_a[i], last_b[i]);
    printf("\n");
    pthread_mutex_unlock(&lock);
}

static void print_counts(void)
{
    pthread_mutex_lock(&lock);
    printf("chains=%ld mixed_a=%ld mixed_b=%ld crossed=%ld seen=%ld,%ld\n", chains, mixed_a,
           mixed_b, crossed, seen[1], seen[2]);
    pthread_mutex_unlock(&lock);
}

int main(void)
{
    pthread_t threads[THREADS];
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, hot, (void *)i);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "sync", 4) == 0) {
            sync_threads();
        } else if (strncmp(line, "counts", 6) == 0) {
            print_counts();
        } else if (strncmp(line, "count", 5) == 0) {
            printf("count=%d\n", b_count());
        } else if (strncmp(line, "stop", 4) == 0) {
            stopping = 1;
            for (int i = 0; i < THREADS; i++)
                pthread_join(threads[i], NULL);
            print_counts();
            return 0;
        }
    }
    return 0;
}
