/* Patch for cm_lib.c: lib_tag version 2. */
int lib_tag_v2(void)
{
    return 2;
}
