/* A patch whose constructor replaces the process's program (execve) while
 * the agent loads it: the trigger must report the process gone (16). */
#include <unistd.h>

__attribute__((constructor)) static void replace_program(void)
{
    char *argv[] = {"lc_app", "execd", NULL};
    execv("/proc/self/exe", argv);
}

int lc_value_v3(void)
{
    return 3;
}
