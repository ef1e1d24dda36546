/* Patches for cm_lib.c's lib_value / lib_other, one .so per value:
 * built with -DNAME=... -DVALUE=... */
int NAME(void)
{
    return VALUE;
}
