int coro_tag_v2(void)
{
    return 2;
}
