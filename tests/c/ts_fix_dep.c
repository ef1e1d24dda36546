/* A patch that needs ts_fix.c's patch applied first (requires: fix.ulp). */
int ts_b_v5(void)
{
    return 5;
}
