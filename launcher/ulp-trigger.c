/* ulp-trigger: raise the scheduling priority, then run the Python command.
 *
 * A trigger started from the target's own terminal session shares one CPU
 * share with the target's threads (autogroup): with 64 busy threads there,
 * even `python -c pass` took 2-6 s of wall time on 2 cores, before any of
 * ulp-trigger's own code could raise its priority.  This program is the
 * installed `ulp-trigger`: it asks for SCHED_FIFO priority 1 first (which
 * needs root or CAP_SYS_NICE; without them nothing changes), then replaces
 * itself with the Python command installed beside it as `ulp-trigger-py`,
 * whose first line names the right interpreter.  The policy is kept across
 * execve and inherited by the trigger's threads (trigger/priority.py, which
 * then finds it raised already and leaves it). */
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define COMMAND "ulp-trigger-py"

int main(int argc, char **argv)
{
    (void)argc;
    struct sched_param param = {.sched_priority = 1};
    sched_setscheduler(0, SCHED_FIFO, &param);  /* without the privilege: as it is */

    char self[PATH_MAX], target[PATH_MAX + sizeof COMMAND];
    ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0) {
        fprintf(stderr, "ulp-trigger: cannot find where it is installed: %s\n", strerror(errno));
        return 1;
    }
    self[length] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    snprintf(target, sizeof target, "%s/%s", self, COMMAND);
    execv(target, argv);
    fprintf(stderr, "ulp-trigger: cannot run %s: %s\n", target, strerror(errno));
    return 1;
}
