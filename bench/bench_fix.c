/* The patch `make bench` applies: the same work in new versions.  The
 * driver built against this library (drv_direct) calls the replacements
 * directly through its PLT: the baseline of the patched-call figure. */
int bench_fib(int n);

__attribute__((noipa)) int bench_inc_v2(int x)
{
    return x + 1;
}

__attribute__((noipa)) int bench_fib_v2(int n)
{
    return n < 2 ? n : bench_fib(n - 1) + bench_fib(n - 2);
}
