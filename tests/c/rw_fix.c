/* The fix of rw_lib.c's rw_accepts() (tests/test_realworld.py), written as
 * docs/realworld.md tells: the changed function under a new name, calling the
 * library's own rw_limit() (linked against the prepared library). */
int rw_limit(void);

int rw_accepts_fixed(int len)
{
    return len >= 0 && len < rw_limit(); /* was: len <= rw_limit() */
}
