/* Case 11: calls the argument-convention functions and prints the results
 * exactly (%a).
 *   call        -> through the library (prepared or not, patched or not)
 *   direct PATH -> the replacements of the patch object PATH, via dlopen/dlsym */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "cm_args.h"

double args_many(ARGS_MANY_PARAMS);
double args_varargs(const char *fmt, ...);
struct pair args_pair(struct pair p, int k);
struct big args_big(struct big in, double scale, int i7, int i8);

struct functions {
    double (*many)(ARGS_MANY_PARAMS);
    double (*varargs)(const char *fmt, ...);
    struct pair (*pair)(struct pair p, int k);
    struct big (*big)(struct big in, double scale, int i7, int i8);
};

static void run(const struct functions *f)
{
    double many = f->many(1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 0.5, 1.25, -2.75, 3.5, 4.125,
                          -5.5, 6.75, 7.875, -8.25, 9.5, 10.5f, -12345678901L);
    /* 12 doubles: 8 in xmm registers (%al = 8), the rest on the stack */
    double var = f->varargs("idddldddddddiddd", 7, 0.5, 1.5, 2.5, 9L, 3.5, 4.5, 5.5, 6.5, 7.5,
                            8.5, 9.25, -3, 10.5, 11.5, 12.5);
    struct pair p = f->pair((struct pair){123456789012L, 2.25}, 3);
    struct big in = {{1, -2, 3, -4, 5, -6}, {0.5, 1.5, -2.5}};
    struct big b = f->big(in, 4.0, 7, -8);
    printf("many=%a var=%a pair=%ld,%a big=%ld,%ld,%ld,%ld,%ld,%ld,%a,%a,%a\n", many, var, p.a,
           p.b, b.v[0], b.v[1], b.v[2], b.v[3], b.v[4], b.v[5], b.d[0], b.d[1], b.d[2]);
}

int main(void)
{
    char line[4096];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "call") == 0) {
            struct functions f = {args_many, args_varargs, args_pair, args_big};
            run(&f);
        } else if (strncmp(line, "direct ", 7) == 0) {
            void *h = dlopen(line + 7, RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                printf("dlopen failed %s\n", dlerror());
                continue;
            }
            struct functions f = {dlsym(h, "args_many_v2"), dlsym(h, "args_varargs_v2"),
                                  dlsym(h, "args_pair_v2"), dlsym(h, "args_big_v2")};
            if (!f.many || !f.varargs || !f.pair || !f.big)
                printf("dlsym failed\n");
            else
                run(&f);
        } else {
            printf("unknown command %s\n", line);
        }
    }
    return 0;
}
