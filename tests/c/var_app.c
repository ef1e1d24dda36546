/* Prints the library's globals and its own on each "show" line of stdin.
 * Built with -DDIRECT it also uses the library's `counter` directly, so it
 * gets a copy of it (an R_X86_64_COPY relocation), which the library's own
 * code then uses too, and prints that copy as "direct=". */
#include <stdio.h>
#include <string.h>

void var_show(char *out, int size);

int app_global = 42;
#ifdef DIRECT
extern int counter;
#endif

int main(void)
{
    char line[64], shown[256];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "show", 4) == 0) {
            var_show(shown, sizeof shown);
#ifdef DIRECT
            printf("%s app_global=%d direct=%d\n", shown, app_global, counter);
#else
            printf("%s app_global=%d\n", shown, app_global);
#endif
        }
    }
    return 0;
}
