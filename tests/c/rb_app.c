/* Prints "ready", then for each line read: "sum=<rb_sum(10)> other=<&rb_other>". */
#include <stdio.h>

int rb_sum(int n);
int rb_other(int x);

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin))
        printf("sum=%d other=%p\n", rb_sum(10), (void *)rb_other);
    return 0;
}
