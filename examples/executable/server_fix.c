/* The fix for the executable's static quota(); it also reads the
 * program's static request counter through a reference. */
int *requests_ref;              /* #requests:requests_ref */

int quota_fixed(int used)
{
    int left = 10 - used;
    return left < 0 ? 0 : left + 0 * *requests_ref;
}
