/* Times calls into libbench.  Prints "ready", waits for a line on stdin
 * (the driver may patch the process meanwhile), then prints one line:
 *   inc=<ns per call> fib=<ns per fib(FIB_N)> direct_inc=<ns> direct_fib=<ns>
 * direct_* call the patch's replacements through pointers from dlsym (0 when
 * no patch object is given).  Each figure is the best of several rounds. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int bench_inc(int x);
int bench_fib(int n);

#define CALLS 200000
#define FIB_N 24
#define ROUNDS 301

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static volatile int sink;

static double time_inc(int (*inc)(int))
{
    double best = 1e30;
    for (int round = 0; round < ROUNDS; round++) {
        int acc = 0;
        double start = now();
        for (int i = 0; i < CALLS; i++)
            acc = inc(acc);
        double took = (now() - start) / CALLS;
        sink = acc;
        if (took < best)
            best = took;
    }
    return best;
}

static double time_fib(int (*fib)(int))
{
    double best = 1e30;
    for (int round = 0; round < ROUNDS; round++) {
        double start = now();
        sink = fib(FIB_N);
        double took = now() - start;
        if (took < best)
            best = took;
    }
    return best;
}

int main(int argc, char **argv)
{
    char line[16];
    int (*direct_inc)(int) = NULL, (*direct_fib)(int) = NULL;
    if (argc > 1) {
        void *patch = dlopen(argv[1], RTLD_NOW);
        if (!patch) {
            fprintf(stderr, "%s\n", dlerror());
            return 1;
        }
        direct_inc = (int (*)(int))dlsym(patch, "bench_inc_v2");
        direct_fib = (int (*)(int))dlsym(patch, "bench_fib_v2");
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    if (!fgets(line, sizeof line, stdin))
        return 1;
    printf("inc=%.3f fib=%.0f direct_inc=%.3f direct_fib=%.0f\n", time_inc(bench_inc),
           time_fib(bench_fib), direct_inc ? time_inc(direct_inc) : 0.0,
           direct_fib ? time_fib(direct_fib) : 0.0);
    return 0;
}
