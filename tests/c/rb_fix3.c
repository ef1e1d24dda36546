/* A later patch of tests/test_rebind.py: replaces rb_helper only, which the
 * earlier patch replaced too and calls from its rb_sum_v2. */
int rb_helper_v3(int x)
{
    return x + 3000;
}
