/* A stand-in for a distribution's library in make test's slice of
 * make realworld (tests/test_realworld.py): built with `ulp flags`, prepared
 * and fixed live by the same code (realworld/rwlib.py) as zlib and SQLite.
 *
 * rw_checksum() hashes bytes through a private helper; rw_accepts() has the
 * bug the fix (rw_fix.c) corrects: a length equal to the limit is accepted. */

static unsigned mix(unsigned hash, unsigned char byte)
{
    return (hash ^ byte) * 16777619u;
}

unsigned rw_checksum(const unsigned char *data, int len)
{
    unsigned hash = 2166136261u;
    for (int i = 0; i < len; i++)
        hash = mix(hash, data[i]);
    return hash;
}

int rw_limit(void)
{
    return 100;
}

/* 1 if a buffer of LEN bytes fits, else 0.  The bug: LEN == limit fits. */
int rw_accepts(int len)
{
    return len >= 0 && len <= rw_limit();
}
