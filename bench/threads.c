/* A process with many threads for the apply-pause benchmark: half call
 * libbench in a loop, half are blocked in read().  Prints "ready" once all
 * run, then waits for stdin to close. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int bench_inc(int x);

static int blocker[2];
static volatile int stop;

static void *busy(void *unused)
{
    int acc = 0;
    (void)unused;
    while (!stop)
        acc = bench_inc(acc);
    return NULL;
}

static void *blocked(void *unused)
{
    char byte;
    (void)unused;
    if (read(blocker[0], &byte, 1) < 0)
        perror("read");
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 256;
    pthread_t thread;
    char line[16];
    if (pipe(blocker) != 0)
        return 1;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&thread, NULL, i % 2 ? blocked : busy, NULL) != 0)
            return 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin))
        ;
    stop = 1;
    return 0;
}
