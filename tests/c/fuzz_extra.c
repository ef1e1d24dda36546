/* A library for the ulp-prepare fuzzer with what prep_lib.c lacks: thread-local
 * storage, an IFUNC, a symbol version definition (fuzz_extra.map) and, linked
 * with --hash-style=both, a SysV .hash besides .gnu.hash. */
__thread int extra_tls_calls = 1;
__thread int extra_tls_zero[4];

int extra_count(int x)
{
    extra_tls_calls++;
    return x + extra_tls_calls + extra_tls_zero[x & 3];
}

static int extra_impl(int x)
{
    return x * 7;
}

static int (*extra_resolve(void))(int)
{
    return extra_impl;
}

int extra_ifunc(int x) __attribute__((ifunc("extra_resolve")));

int extra_versioned(int x)
{
    return extra_count(x) + extra_ifunc(x);
}
