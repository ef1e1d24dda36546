/* Links prep_small.c into an executable, which ulp-prepare must refuse. */
#include <stdio.h>

int bar(int x);

int main(void)
{
    printf("%d\n", bar(1));
    return 0;
}
