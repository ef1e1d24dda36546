/* Counts the instructions a region of another process executes, by
 * single-stepping it: the instruction-count figure for processes valgrind
 * cannot host (ulp-trigger attaches to them).
 *
 *   stepcount PID
 *
 * Seizes thread PID (the main thread of callbench serve), prints
 * "attached", then for every region callbench marks (an int3 with
 * rax = TAG, the code, an int3 with rax = -1) prints "count TAG STEPS":
 * the number of single steps from the first marker to the second (a system
 * call is one step; a signal delivered in the region is passed on and its
 * handler stepped too).  Ends when the process exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>

static int trap_code(pid_t pid)
{
    siginfo_t info;
    if (ptrace(PTRACE_GETSIGINFO, pid, NULL, &info) != 0)
        return -1;
    return info.si_code;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: stepcount PID\n");
        return 2;
    }
    pid_t pid = (pid_t)atoi(argv[1]);
    if (ptrace(PTRACE_SEIZE, pid, NULL, NULL) != 0) {
        perror("stepcount: PTRACE_SEIZE");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("attached\n");

    int in_region = 0;
    long tag = 0;
    unsigned long long steps = 0;
    for (;;) {
        int status;
        if (waitpid(pid, &status, __WALL) < 0) {
            if (errno == EINTR)
                continue;
            perror("stepcount: waitpid");
            return 1;
        }
        if (WIFEXITED(status) || WIFSIGNALED(status))
            return 0;
        if (!WIFSTOPPED(status))
            continue;
        int sig = WSTOPSIG(status);
        if (status >> 16 != 0) {    /* a ptrace event stop (PTRACE_INTERRUPT, group stop) */
            ptrace(in_region ? PTRACE_SINGLESTEP : PTRACE_CONT, pid, NULL, NULL);
            continue;
        }
        if (sig == SIGTRAP && trap_code(pid) == SI_KERNEL) {    /* a marker: int3 */
            struct user_regs_struct regs;
            if (ptrace(PTRACE_GETREGS, pid, NULL, &regs) != 0) {
                perror("stepcount: PTRACE_GETREGS");
                return 1;
            }
            if (!in_region && (long)regs.rax >= 0) {
                in_region = 1;
                tag = (long)regs.rax;
                steps = 0;
                ptrace(PTRACE_SINGLESTEP, pid, NULL, NULL);
            } else {
                if (in_region)
                    printf("count %ld %llu\n", tag, steps);
                in_region = 0;
                ptrace(PTRACE_CONT, pid, NULL, NULL);
            }
            continue;
        }
        if (in_region && sig == SIGTRAP && trap_code(pid) == TRAP_TRACE) {
            steps++;
            ptrace(PTRACE_SINGLESTEP, pid, NULL, NULL);
            continue;
        }
        /* any other signal belongs to the program: deliver it */
        ptrace(in_region ? PTRACE_SINGLESTEP : PTRACE_CONT, pid, NULL, (void *)(long)sig);
    }
}
