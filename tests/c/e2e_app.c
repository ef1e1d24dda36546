/* Answers one line per command read on stdin, so tests need no sleeps:
 *   call     -> the library's results */
#include <stdio.h>
#include <string.h>

int lib_value(void);
int lib_twice(int x);
int lib_value_plus(int x);
double lib_half(double x);

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "call", 4) == 0)
            printf("value=%d twice=%d plus=%d half=%g\n", lib_value(), lib_twice(21),
                   lib_value_plus(1), lib_half(5.0));
        else
            printf("unknown command\n");
    }
    return 0;
}
