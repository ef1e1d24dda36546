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
