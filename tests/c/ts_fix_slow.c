/* A patch that takes long to load: the agent stays busy past a short
 * --timeout of the trigger. */
#include <time.h>

__attribute__((constructor)) static void load_slowly(void)
{
    struct timespec pause = {1, 500 * 1000 * 1000};
    while (nanosleep(&pause, &pause) != 0)
        ;
}

int ts_a_v4(void)
{
    return 4;
}
