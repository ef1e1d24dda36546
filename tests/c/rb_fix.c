/* The patch of tests/test_rebind.py: its recursion calls rb_sum (which it
 * replaces) and rb_helper (which it does not); it takes rb_other's
 * address, which must stay the trampoline's (a function both called and
 * address-taken shares one GOT slot for both, and is not rebound). */
int rb_sum(int n);
int rb_helper(int x);
int rb_other(int x);

int (*rb_fix_other_address(void))(int)
{
    return rb_other;
}

__attribute__((noipa)) int rb_sum_v2(int n)
{
    return n <= 0 ? rb_helper(0) : n + rb_sum(n - 1);
}

/* For the stacked patches of test_rebind.py: replaced together with rb_sum. */
int rb_helper_v2(int x)
{
    return x + 2000;
}
