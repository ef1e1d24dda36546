/* The patch of lc_lib.c. */
int lc_value_v2(void)
{
    return 2;
}
