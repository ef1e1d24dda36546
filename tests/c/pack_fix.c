/* Patch object for the ulp-packer tests: replacements for pack_target.c. */

int foo_fixed(int x)
{
    return x * 3 + 2;
}

int bar_fixed(int x)
{
    return x - 2;
}

int baz_fixed(int x)
{
    return foo_fixed(x) + bar_fixed(x);
}

/* Not functions: naming them as replacements must be refused. */
int fix_data = 7;
