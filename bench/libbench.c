/* The library the benchmark calls. */
int bench_inc(int x)
{
    return x + 1;
}

/* Recursion through the PLT: every call passes the tracker. */
__attribute__((noipa)) int bench_fib(int n)
{
    return n < 2 ? n : bench_fib(n - 1) + bench_fib(n - 2);
}
