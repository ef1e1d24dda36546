/* A program whose own function has the bug.  Built as a PIE with the
 * padding flags and prepared with ulp-prepare like a library. */
#include <stdio.h>

static int requests;

/* noipa: a real function main() calls (no inlining, no clone) */
__attribute__((noipa)) static int quota(int used)
{
    return 10 - used;           /* the bug: may go negative */
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin))
        printf("quota=%d requests=%d\n", quota(12), ++requests);
    return 0;
}
