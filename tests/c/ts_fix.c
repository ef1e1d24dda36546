/* The patch of ts_lib.c: both functions at once. */
int ts_a_v2(void)
{
    return 2;
}

int ts_b_v2(void)
{
    return 2;
}
