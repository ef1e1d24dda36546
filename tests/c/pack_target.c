/* Target library for the ulp-packer tests: prepared with ulp-prepare. */

static int helper(int x)
{
    return x * 3;
}

int foo(int x)
{
    return helper(x) + 1;
}

int bar(int x)
{
    return x - 1;
}

int baz(int x)
{
    return foo(x) + bar(x);
}

/* A second name for foo: both dynamic symbols point at one function. */
int foo_alias(int x) __attribute__((alias("foo")));

int target_data = 42;
