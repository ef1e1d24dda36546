/* The library every call figure of `make bench` calls.  Built twice from
 * this one source: without the padding flag (the baseline, "unflagged") and
 * with it, then prepared by ulp-prepare.  Every export is reached through
 * the caller's PLT; calls between exports go through this library's own PLT
 * (-fPIC, default visibility: they may be interposed, so gcc neither
 * inlines them nor binds them locally). */
#include <signal.h>

__attribute__((noipa)) int bench_inc(int x)
{
    return x + 1;
}

/* Nested entries: the library calls its own export N times. */
int bench_nested_loop(int n, int acc)
{
    for (int i = 0; i < n; i++)
        acc = bench_inc(acc);
    return acc;
}

/* Callbacks: the library calls back into the application N times; the
 * callback calls the library again while this activation is live. */
int bench_callback_loop(int (*callback)(int), int n, int acc)
{
    for (int i = 0; i < n; i++)
        acc = callback(acc);
    return acc;
}

/* Signal-handler entries: the handler runs while this activation is live. */
int bench_raise(int sig)
{
    return raise(sig);
}

/* Recursion through the PLT: with a patch, every call is patched. */
__attribute__((noipa)) int bench_fib(int n)
{
    return n < 2 ? n : bench_fib(n - 1) + bench_fib(n - 2);
}
