/* Two exported functions, for the refusal tests of ulp-prepare. */
int foo(int x)
{
    return x + 100;
}

int bar(int x)
{
    return foo(x) * 2;
}
