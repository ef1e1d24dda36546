/* A third prepared library, which the test program does not load: a patch
 * of A and C is refused there whole. */
__attribute__((noipa)) int c_tag(void)
{
    return 1;
}
