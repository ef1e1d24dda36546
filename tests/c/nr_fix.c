int nr_value_v2(void)
{
    return 2;
}
