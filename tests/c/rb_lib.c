/* The library of tests/test_rebind.py: a recursive function the patch
 * replaces, a helper it calls but does not replace, and a function whose
 * address it takes. */
int rb_helper(int x)
{
    return x + 1000;
}

__attribute__((noipa)) int rb_sum(int n)
{
    return n <= 0 ? 0 : n + rb_sum(n - 1);
}

int rb_other(int x)
{
    return x - 1;
}
