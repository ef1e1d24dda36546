/* A small library the hammering threads dlopen and dlclose in a loop. */
int ts_dl_value(int x)
{
    return x + 1;
}
