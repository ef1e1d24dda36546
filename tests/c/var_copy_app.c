/* Uses the library's `counter` directly: the program gets a copy of it (an
 * R_X86_64_COPY relocation), which the library's own code then uses too.
 * Prints the library's view and its own on each "show" line of stdin. */
#include <stdio.h>
#include <string.h>

extern int counter;
void var_show(char *out, int size);

int main(void)
{
    char line[64], shown[256];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "show", 4) == 0) {
            var_show(shown, sizeof shown);
            printf("%s direct=%d\n", shown, counter);
        }
    }
    return 0;
}
