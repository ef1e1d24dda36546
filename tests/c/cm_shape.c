/* Case 12 of the consistency tests: one small library per shape, built with
 * -DNAME=<tag function> and the shape's flags.  NAME returns version tag 1;
 * NAME_twice calls it twice (through the PLT, or directly when linked with
 * -Wl,-Bsymbolic).  -DWEAK makes NAME weak; -DFILL=N puts N bytes of code
 * before NAME (the test chooses N so that NAME's padding crosses a page). */
#define CAT(a, b) a##b
#define XCAT(a, b) CAT(a, b)
#define STR(x) #x
#define XSTR(x) STR(x)

#ifdef FILL
__attribute__((used, noinline)) static void filler(void)
{
    __asm__ volatile(".skip " XSTR(FILL) ", 0x90");
}
#endif

#ifdef WEAK
__attribute__((weak))
#endif
int NAME(void)
{
    return 1;
}

int XCAT(NAME, _twice)(void)
{
    return NAME() * 10 + NAME();
}
