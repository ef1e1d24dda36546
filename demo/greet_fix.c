/* The live patch: replacements for greet() and add_tax(). */
const char *greet_fixed(void)
{
    return "hello from the PATCHED library";
}

int add_tax_fixed(int cents)
{
    return cents + cents / 5;
}
