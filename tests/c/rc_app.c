/* A thread made with a raw clone that keeps its creator's thread pointer
 * (no CLONE_SETTLS): both threads share one TLS, and so one record of the
 * runtime.  Commands on stdin:
 *   clone -> the clone calls coro_tag in a loop; prints "cloned" once it runs
 *   stop  -> the clone ends; prints "stopped" once the kernel has let it go
 *   tag   -> "tag=<coro_tag()>" from main */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int coro_tag(void);

#define STACK_SIZE (256 * 1024)

static volatile int running, stop;
static volatile pid_t clone_tid;      /* cleared by the kernel when the clone ends */

static int cloned(void *unused)
{
    (void)unused;
    running = 1;
    while (!stop)
        coro_tag();
    return 0;
}

int main(void)
{
    char line[32];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "clone", 5) == 0) {
            char *stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
            int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
                        CLONE_SYSVSEM | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID;
            running = stop = 0;
            if (clone(cloned, stack + STACK_SIZE, flags, NULL, &clone_tid, NULL, &clone_tid) < 0)
                return 1;
            while (!running)
                ;
            printf("cloned\n");
        } else if (strncmp(line, "stop", 4) == 0) {
            stop = 1;
            pid_t tid;
            while ((tid = clone_tid) != 0)
                syscall(SYS_futex, &clone_tid, FUTEX_WAIT, tid, NULL, NULL, 0);
            printf("stopped\n");
        } else if (strncmp(line, "tag", 3) == 0) {
            printf("tag=%d\n", coro_tag());
        }
    }
    return 0;
}
