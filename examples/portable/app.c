/* A service using libquota.so: prints one line per line read on stdin. */
#include <stdio.h>

int quota_allowed(int used, int request);
int quota_limit(void);

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin))
        printf("limit=%d allowed(60,40)=%d allowed(60,41)=%d\n", quota_limit(),
               quota_allowed(60, 40), quota_allowed(60, 41));
    return 0;
}
