/* A replacement for pv_value: PV_NAME (default pv_value_fix) returns
 * PV_VALUE.  Built with several values and names: the patch objects of one
 * size that differ only in the constant, or only in the symbol name. */
#ifndef PV_NAME
#define PV_NAME pv_value_fix
#endif
int PV_NAME(void)
{
    return PV_VALUE;
}
