/* A patch for e2e_lib.c. */
int lib_value_v2(void)
{
    return 200;
}
