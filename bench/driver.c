/* The loops of every call figure.  One source, built once per library
 * variant (linked against the unflagged library, the prepared one, or the
 * patch object, each under its own soname) with identical flags, so every
 * variant runs the same loop and calls its library through its own PLT.  callbench loads each build with RTLD_LOCAL: the PLT of one build
 * binds to its own library only.
 *
 * Every figure is `int drv_FIGURE(int n)`: n calls (fib: fib(n)).  The
 * build against the patch object (drv_direct: -DONLY_CALLS
 * -Dbench_inc=bench_inc_v2 -Dbench_fib=bench_fib_v2) calls the
 * replacements directly; it has only the loop, depth and fib figures. */
#include <signal.h>
#include <string.h>

int bench_inc(int x);
int bench_fib(int n);
int bench_nested_loop(int n, int acc);
int bench_callback_loop(int (*callback)(int), int n, int acc);
int bench_raise(int sig);

/* A loop from one frame: the return-address slot is the same every call. */
int drv_loop(int n)
{
    int acc = 0;
    for (int i = 0; i < n; i++)
        acc = bench_inc(acc);
    return acc;
}

/* Calls bench_inc DEPTH frames below its caller; the guard read after the
 * call keeps the recursion (no tail call). */
__attribute__((noipa)) static int descend(int depth, int x)
{
    volatile int guard[4] = {depth};
    if (depth == 0)
        return bench_inc(x);
    return descend(depth - 1, x) + guard[0] - depth;
}

/* External entries from varying stack depths: 0..15 frames below the loop,
 * in an order that goes up and down ((7 * i) mod 16). */
int drv_depth(int n)
{
    int acc = 0;
    for (int i = 0; i < n; i++)
        acc = descend((7 * i) & 15, acc);
    return acc;
}

int drv_fib(int n)
{
    return bench_fib(n);
}

#ifndef ONLY_CALLS
/* Nested entries: the library calls its own export through its PLT. */
int drv_nested(int n)
{
    return bench_nested_loop(n, 0);
}

__attribute__((noipa)) static int callback(int x)
{
    return bench_inc(x);
}

/* Callbacks: the library calls back, the callback calls the library. */
int drv_callback(int n)
{
    return bench_callback_loop(callback, n, 0);
}

static volatile int handler_calls, handler_result;

static void handler(int sig)
{
    int acc = 0;
    (void)sig;
    for (int i = 0; i < handler_calls; i++)
        acc = bench_inc(acc);
    handler_result = acc;
}

/* Signal-handler entries: the library raises a signal, the handler (this
 * build's) calls the library n times while the library's frame is live. */
int drv_signal(int n)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGUSR1, &action, NULL) != 0)
        return -1;
    handler_calls = n;
    if (bench_raise(SIGUSR1) != 0)
        return -1;
    return handler_result;
}
#endif
