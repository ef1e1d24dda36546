/* Library B of the tests of a patch of two libraries: as library A
 * (mt_liba.c), entered from A's callback. */
typedef void (*mt_callback)(int *tags, int *n);

__attribute__((noipa)) int b_tag(void)
{
    return 1;
}

__attribute__((noipa)) int b_act(mt_callback callback, int *tags, int *n)
{
    tags[(*n)++] = b_tag();
    callback(tags, n);
    tags[(*n)++] = b_tag();
    return *n;
}

/* A private function and private data of B, for a patch whose second
 * library has a private unit and a data reference. */
static int b_total;

__attribute__((noipa)) static int b_step(void)
{
    return ++b_total;
}

int b_count(void)
{
    return b_step();
}
