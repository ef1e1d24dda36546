/* The target library of the lifecycle tests (tests/test_lifecycle.py). */
int lc_value(void)
{
    return 1;
}
