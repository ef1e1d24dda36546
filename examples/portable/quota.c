/* libquota.so, version 1: a request that fills the quota exactly is
 * refused (the bug the patch fixes). */
int quota_allowed(int used, int request)
{
    return used + request < 100;
}

int quota_limit(void)
{
    return 100;
}
