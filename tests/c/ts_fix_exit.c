/* A patch whose loading ends the process: the target exits in the middle of
 * an apply, on its own. */
#include <unistd.h>

__attribute__((constructor)) static void end_the_process(void)
{
    _exit(7);
}

int ts_a_v3(void)
{
    return 3;
}
