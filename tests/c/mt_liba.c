/* Library A of the tests of a patch of two libraries (tests/test_multi_target.py).
 * a_tag says which version of A runs (the original: 1).  a_act is one
 * activation of A: it records A's version, calls back into the program
 * (which enters library B, whose callback re-enters A from outside), and
 * records A's version again. */
typedef void (*mt_callback)(int *tags, int *n);

__attribute__((noipa)) int a_tag(void)
{
    return 1;
}

__attribute__((noipa)) int a_act(mt_callback callback, int *tags, int *n)
{
    tags[(*n)++] = a_tag();
    callback(tags, n);
    tags[(*n)++] = a_tag();
    return *n;
}
