/* The target library of the provenance tests (tests/test_provenance.py). */
int pv_value(void)
{
    return 1;
}
