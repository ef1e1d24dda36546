/* A service that must not restart: it calls libgreet in a loop. */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

const char *greet(void);
int add_tax(int cents);

int main(void)
{
    struct timespec pause = {0, 250 * 1000 * 1000};
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned tick = 0;; tick++) {
        printf("[pid %d] tick %u: %s, add_tax(100) = %d\n", getpid(), tick, greet(),
               add_tax(100));
        nanosleep(&pause, NULL);
    }
}
