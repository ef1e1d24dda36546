/* Case 3 of the consistency tests: combo() calls three patched functions,
 * with work in between, and returns their version tags as digits:
 * 111 = all original, 222 = all patched, anything else a mix.  Built twice:
 * by default the calls go through the PLT; with -fno-semantic-interposition
 * they are direct calls (the test checks the machine code). */
static volatile unsigned sink;

static void work(unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        sink += i;
}

__attribute__((noinline)) int combo_a(void)
{
    return 1;
}

__attribute__((noinline)) int combo_b(void)
{
    return 1;
}

__attribute__((noinline)) int combo_c(void)
{
    return 1;
}

int combo(unsigned spin)
{
    int a = combo_a();
    work(spin);
    int b = combo_b();
    work(spin);
    int c = combo_c();
    return a * 100 + b * 10 + c;
}
