/* Says "ready", then answers each line "call" with nr_value(). */
#include <stdio.h>
#include <string.h>

int nr_value(void);

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin))
        if (strcmp(line, "call\n") == 0)
            printf("value=%d\n", nr_value());
    return 0;
}
