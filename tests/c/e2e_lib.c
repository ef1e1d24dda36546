/* The target library of the end-to-end tests. */
int lib_value(void)
{
    return 100;
}

int lib_twice(int x)
{
    return 2 * x;
}

/* Calls lib_value through the PLT: a nested entry. */
int lib_value_plus(int x)
{
    return lib_value() + x;
}

double lib_half(double x)
{
    return x / 2;
}
