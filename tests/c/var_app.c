/* Prints the library's globals and its own on each "show" line of stdin. */
#include <stdio.h>
#include <string.h>

void var_show(char *out, int size);

int app_global = 42;

int main(void)
{
    char line[64], shown[256];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "show", 4) == 0) {
            var_show(shown, sizeof shown);
            printf("%s app_global=%d\n", shown, app_global);
        }
    }
    return 0;
}
