/* The randomized stress of the consistency model (issue 7, item 8c).
 *
 * THREADS hot threads run activations of the library (tests/c/cm_step_lib.c)
 * nonstop, each with a callback that enters the library again from outside;
 * a timer delivers SIGALRM to the process every millisecond, and its
 * handler runs an activation too (on whichever thread it lands, maybe in
 * the middle of an activation or of the tracker).  Every activation checks
 * that it saw one version.  Meanwhile the test applies and reverts three
 * stacked patches (versions 2, 3, 4) in random order.
 *
 * stdin: "counts" prints the totals; "stop" ends the threads and prints them. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#define THREADS 8
#define MAX_TAGS 16

typedef void (*step_callback)(int *tags, int *n);
int lib_tag(void);
int lib_act(step_callback callback, int *tags, int *n);

static volatile int stopping;
static long activations, mixed, seen[8], in_handlers;

static void callback(int *tags, int *n)
{
    tags[(*n)++] = lib_tag();
}

/* One activation; 1 if it saw one version. */
static int activation(void)
{
    int tags[MAX_TAGS], n = 0;
    lib_act(callback, tags, &n);
    int one = 1;
    for (int i = 1; i < n; i++)
        one &= tags[i] == tags[0];
    __atomic_add_fetch(&activations, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&seen[tags[0] & 7], 1, __ATOMIC_RELAXED);
    if (!one)
        __atomic_add_fetch(&mixed, 1, __ATOMIC_RELAXED);
    return one;
}

static void on_alarm(int sig)
{
    (void)sig;
    __atomic_add_fetch(&in_handlers, 1, __ATOMIC_RELAXED);
    activation();
}

/* Calls from varying depths, so every path of the tracker runs. */
__attribute__((noipa)) static void at_depth(int depth)
{
    volatile char frame[64];
    frame[0] = (char)depth;
    if (depth > 0)
        at_depth(depth - 1);
    else
        activation();
    (void)frame[0];
}

static void *hot(void *arg)
{
    unsigned step = (unsigned)(long)arg;
    while (!stopping) {
        step = step * 1103515245u + 12345u;
        at_depth((int)(step >> 16) % 5);
        activation();
    }
    return NULL;
}

static void print_counts(void)
{
    printf("activations=%ld mixed=%ld handlers=%ld seen=%ld,%ld,%ld,%ld\n",
           __atomic_load_n(&activations, __ATOMIC_RELAXED),
           __atomic_load_n(&mixed, __ATOMIC_RELAXED),
           __atomic_load_n(&in_handlers, __ATOMIC_RELAXED), seen[1], seen[2], seen[3], seen[4]);
}

int main(void)
{
    pthread_t threads[THREADS];
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction action = {.sa_handler = on_alarm, .sa_flags = SA_RESTART};
    sigaction(SIGALRM, &action, NULL);
    for (long i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, hot, (void *)(i + 1));
    struct itimerval every_ms = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &every_ms, NULL);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "counts", 6) == 0) {
            print_counts();
        } else if (strncmp(line, "stop", 4) == 0) {
            struct itimerval off = {{0, 0}, {0, 0}};
            setitimer(ITIMER_REAL, &off, NULL);
            stopping = 1;
            for (int i = 0; i < THREADS; i++)
                pthread_join(threads[i], NULL);
            print_counts();
            return 0;
        }
    }
    return 0;
}
