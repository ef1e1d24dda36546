/* The patch: quota_allowed as it should have been. */
int quota_allowed_fixed(int used, int request)
{
    return request >= 0 && used + request <= 100;
}
