/* The patch the benchmark applies: same work, new version. */
int bench_fib(int n);

int bench_inc_v2(int x)
{
    return x + 1;
}

__attribute__((noipa)) int bench_fib_v2(int n)
{
    return n < 2 ? n : bench_fib(n - 1) + bench_fib(n - 2);
}
