/* A program that never loads the target library. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin))
        printf("%s", line);
    return 0;
}
