/* A library for the ulp-prepare tests: several kinds of exported functions. */
#include <stdio.h>

int prep_calls;                 /* in .bss: its address must not move */
double prep_bias = 0.5;         /* in .data */

static int helper(int x)        /* not exported: no trampoline */
{
    return x * 3 + 1;
}

int add(int a, int b)
{
    prep_calls++;
    return a + b;
}

/* Same function under other names: they share one trampoline. */
int plus(int a, int b) __attribute__((alias("add")));
int sum2(int a, int b) __attribute__((alias("add")));

double scale(double x, double factor)
{
    prep_calls++;
    return x * factor + prep_bias;
}

/* More arguments than registers: the last two are on the stack. */
long sum8(long a, long b, long c, long d, long e, long f, long g, long h)
{
    prep_calls++;
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h;
}

/* Calls another exported function: through the PLT, hence its trampoline. */
int add_twice(int a, int b)
{
    return add(add(a, b), b) + helper(a);
}

__attribute__((weak)) int weak_answer(void)
{
    return 42;
}

/* A pointer taken inside the library must equal the one the program takes. */
int (*get_add(void))(int, int)
{
    return add;
}

void greet(const char *who)
{
    printf("hello, %s (%d calls)\n", who, prep_calls);
}
