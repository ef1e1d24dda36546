/* The process every call figure of `make bench` runs in.
 *
 *   callbench count DRIVER FIGURE N
 *       runs one figure once and exits (callgrind counts the whole run;
 *       run_bench.py subtracts two lengths, so loading and setup cancel).
 *   callbench serve NAME=DRIVER ...
 *       loads each driver (driver.c built against one library variant),
 *       prints "ready", then obeys lines on stdin:
 *         time ROUNDS  every figure of every variant, ROUNDS times, the
 *                      variants in a rotated order each round; one line
 *                      "time ROUND VARIANT FIGURE NS" per measurement
 *                      (ns per call; fib: ns per fib(FIB_N))
 *         step TAG VARIANT FIGURE N
 *                      runs the figure between two int3 markers for the
 *                      single-stepping counter (stepcount.c): rax = TAG at
 *                      the first, -1 at the second
 *       and prints "done" after each. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_VARIANTS 8
#define FIB_N 32

typedef int (*figure_fn)(int);

struct figure {
    const char *name;
    int n;          /* calls per timed run (fib: its argument) */
};

static const struct figure figures[] = {
    {"loop", 200000}, {"depth", 100000}, {"nested", 200000},
    {"callback", 200000}, {"signal", 200000}, {"fib", FIB_N},
};
#define NFIGURES (sizeof figures / sizeof figures[0])

struct variant {
    const char *name;
    figure_fn fn[NFIGURES];     /* NULL: this build lacks the figure */
};

static struct variant variants[MAX_VARIANTS];
static int nvariants;
static volatile int sink;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int figure_index(const char *name)
{
    for (size_t i = 0; i < NFIGURES; i++)
        if (strcmp(figures[i].name, name) == 0)
            return (int)i;
    return -1;
}

static int load(struct variant *variant, const char *name, const char *path)
{
    void *driver = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!driver) {
        fprintf(stderr, "callbench: %s\n", dlerror());
        return -1;
    }
    variant->name = name;
    for (size_t i = 0; i < NFIGURES; i++) {
        char symbol[64];
        snprintf(symbol, sizeof symbol, "drv_%s", figures[i].name);
        variant->fn[i] = (figure_fn)dlsym(driver, symbol);
    }
    return 0;
}

static void time_rounds(int rounds)
{
    for (int round = 0; round < rounds; round++)
        for (int k = 0; k < nvariants; k++) {
            struct variant *variant = &variants[(round + k) % nvariants];
            for (size_t i = 0; i < NFIGURES; i++) {
                if (!variant->fn[i])
                    continue;
                int n = figures[i].n;
                double start = now_ns();
                sink = variant->fn[i](n);
                double took = now_ns() - start;
                double per = strcmp(figures[i].name, "fib") == 0 ? took : took / n;
                printf("time %d %s %s %.4f\n", round, variant->name, figures[i].name, per);
            }
        }
}

/* The counter starts at the first int3 and stops at the second. */
static __attribute__((noinline)) void marker(long tag)
{
    __asm__ volatile("int3" : : "a"(tag) : "memory");
}

static int step(long tag, const char *variant_name, const char *figure_name, int n)
{
    int i = figure_index(figure_name);
    for (int k = 0; k < nvariants && i >= 0; k++) {
        if (strcmp(variants[k].name, variant_name) != 0 || !variants[k].fn[i])
            continue;
        figure_fn fn = variants[k].fn[i];
        marker(tag);
        sink = fn(n);
        marker(-1);
        return 0;
    }
    fprintf(stderr, "callbench: no figure %s in %s\n", figure_name, variant_name);
    return -1;
}

static int serve(void)
{
    char line[256], variant[64], figure[64];
    long tag;
    int n;
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "time %d", &n) == 1)
            time_rounds(n);
        else if (sscanf(line, "step %ld %63s %63s %d", &tag, variant, figure, &n) == 4) {
            if (step(tag, variant, figure, n) != 0)
                return 1;
        } else {
            fprintf(stderr, "callbench: bad command: %s", line);
            return 2;
        }
        printf("done\n");
    }
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 5 && strcmp(argv[1], "count") == 0) {
        int i = figure_index(argv[3]);
        if (i < 0 || load(&variants[0], "count", argv[2]) != 0 || !variants[0].fn[i])
            return 2;
        sink = variants[0].fn[i](atoi(argv[4]));
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "serve") == 0 && argc - 2 <= MAX_VARIANTS) {
        for (int a = 2; a < argc; a++) {
            char *eq = strchr(argv[a], '=');
            if (!eq)
                return 2;
            *eq = '\0';
            if (load(&variants[nvariants++], argv[a], eq + 1) != 0)
                return 1;
        }
        return serve();
    }
    fprintf(stderr, "usage: callbench count DRIVER FIGURE N | serve NAME=DRIVER...\n");
    return 2;
}
