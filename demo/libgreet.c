/* The library of the demo: built live-patchable, then prepared. */
const char *greet(void)
{
    return "hello from the original library";
}

/* The bug the patch fixes: the tax is 20%, not 10%. */
int add_tax(int cents)
{
    return cents + cents / 10;
}
