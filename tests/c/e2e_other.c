/* A different build of the target library: same name, other code. */
int lib_value(void)
{
    return 101;
}

int lib_twice(int x)
{
    return 2 * x + 1;
}

int lib_value_plus(int x)
{
    return lib_value() + x;
}

double lib_half(double x)
{
    return x / 2;
}
