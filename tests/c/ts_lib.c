/* The target library of the trigger-safety tests.  ts_both calls ts_a and
 * ts_b through the PLT: nested entries, so one call of ts_both sees one
 * universe and tells whether the two patched functions agree (11 or 22;
 * 12 or 21 would be a half-applied patch). */
int ts_a(void)
{
    return 1;
}

int ts_b(void)
{
    return 1;
}

int ts_both(void)
{
    return ts_a() * 10 + ts_b();
}
