/* A long-running program: each line on stdin parses one record. */
#include <stdio.h>

int parse_record(const char *field, int declared);

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin))
        printf("length=%d\n", parse_record("abc", 100));
    return 0;
}
