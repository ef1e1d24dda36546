/* The tracker under a seccomp filter (issue 7, item 11).  Before its first
 * call into the library the program forbids, on pain of death (SIGSYS),
 * every system call the runtime used to make on application threads:
 * rt_sigprocmask, process_vm_readv, getpid.  Then it enters the library the
 * first time (registration), from 512 KiB deeper than its last entry (a
 * slot too far to read), and with a callback (the tracker's judgment).
 * stdin: "call" prints what the library returned. */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef void (*step_callback)(int *tags, int *n);
int lib_tag(void);
int lib_act(step_callback callback, int *tags, int *n);

#define FORBID(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), \
                   BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)

static void forbid_the_runtimes_old_calls(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        FORBID(SYS_rt_sigprocmask),
        FORBID(SYS_process_vm_readv),
        FORBID(SYS_getpid),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0)
        printf("no seccomp\n");
}

static void callback(int *tags, int *n)
{
    tags[(*n)++] = lib_tag();
}

__attribute__((noipa)) static int far_below(int depth)
{
    volatile char frame[4096];
    frame[0] = 0;
    int tag = depth > 0 ? far_below(depth - 1) : lib_tag();
    return tag + frame[0];
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    forbid_the_runtimes_old_calls();
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "call", 4) == 0) {
            int tags[8], n = 0;
            int first = lib_tag();
            int far = far_below(128);
            lib_act(callback, tags, &n);
            printf("first=%d far=%d act=", first, far);
            for (int i = 0; i < n; i++)
                printf("%d", tags[i]);
            printf("\n");
        }
    }
    return 0;
}
