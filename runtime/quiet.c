/* Quiet moments: when the agent may trust a search made with the world
 * running.
 *
 * The agent's tick searches a pending coroutine stack for a word of
 * prepared code while the application runs (coroutine.c).  A live
 * activation keeps such a word on its stack, with one exception of an
 * instruction or two: compiled code that pushes a stack argument right
 * before a call overwrites the return address its frame's last call left
 * just below the stack pointer.  A thread caught there while the tick reads
 * leaves nothing to find, and its call would then run in the new universe.
 *
 * So the tick believes "nothing found" only if no other thread of the
 * process ran user code meanwhile: every one of them asleep in a system
 * call before the search and after it, with the same time on the CPU (it
 * did not wake in between), and none with its stack pointer on the stack
 * searched (a system call made straight from the library's code leaves no
 * word either).  A thread that runs, is stopped, or cannot be read makes
 * the moment not quiet: the stack stays pending (a delay), and the next
 * quiet tick or the next commit (every thread stopped) clears it.
 *
 * Read from /proc/self/task/TID/{schedstat,syscall} with open and read into
 * static buffers: the agent takes no lock here that a stopped application
 * thread could hold. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ulp_internal.h"

#define MAX_QUIET_THREADS 4096

struct asleep {
    pid_t tid;
    uint64_t ran_ns;            /* schedstat's time on the CPU */
    uintptr_t sp;               /* the stack pointer of its system call */
};

struct ulp_quiet {
    uint32_t n;
    struct asleep threads[MAX_QUIET_THREADS];
};

static struct ulp_quiet before, after;

/* The text of /proc/self/task/TID/NAME into BUFFER; its length, or -1. */
static ssize_t read_task_file(pid_t tid, const char *name, char *buffer, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/%s", tid, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t got = read(fd, buffer, size - 1);
    close(fd);
    if (got >= 0)
        buffer[got] = '\0';
    return got;
}

/* Is thread TID asleep in a system call?  Its state in *STATE if so. */
static int asleep_in_system_call(pid_t tid, struct asleep *state)
{
    char text[256];
    if (read_task_file(tid, "schedstat", text, sizeof text) <= 0)
        return 0;
    state->tid = tid;
    state->ran_ns = strtoull(text, NULL, 10);
    /* "NR ARG1 .. ARG6 SP PC" while in a system call; "running", or
     * "-1 SP PC" when stopped outside one */
    if (read_task_file(tid, "syscall", text, sizeof text) <= 0 || text[0] < '0' ||
        text[0] > '9')
        return 0;
    char *field = text;
    for (int i = 0; i < 7 && field; i++) {
        field = strchr(field, ' ');
        if (field)
            field++;
    }
    if (!field)
        return 0;
    state->sp = (uintptr_t)strtoull(field, NULL, 16);
    return 1;
}

/* By thread id (the kernel lists them in that order already, so an
 * insertion sort runs once over them; qsort might allocate). */
static void sort_by_tid(struct ulp_quiet *q)
{
    for (uint32_t i = 1; i < q->n; i++) {
        struct asleep moved = q->threads[i];
        uint32_t j = i;
        for (; j > 0 && q->threads[j - 1].tid > moved.tid; j--)
            q->threads[j] = q->threads[j - 1];
        q->threads[j] = moved;
    }
}

/* Every thread but the calling one into Q, sorted; 0 if one is not asleep
 * in a system call (or cannot be told). */
static int all_others_asleep(struct ulp_quiet *q)
{
    static char entries[8192] __attribute__((aligned(8)));
    pid_t self = (pid_t)syscall(SYS_gettid);
    int dir = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return 0;
    int ok = 1;
    q->n = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, dir, entries, sizeof entries);
        if (got <= 0) {
            ok = ok && got == 0;
            break;
        }
        for (long at = 0; at < got && ok;) {
            struct dirent64 *entry = (struct dirent64 *)(entries + at);
            at += entry->d_reclen;
            pid_t tid = (pid_t)atoi(entry->d_name);
            if (tid <= 0 || tid == self)
                continue;
            ok = q->n < MAX_QUIET_THREADS && asleep_in_system_call(tid, &q->threads[q->n++]);
        }
        if (!ok)
            break;
    }
    close(dir);
    if (ok)
        sort_by_tid(q);
    return ok;
}

/* Begin a quiet moment: 0 if some other thread runs already. */
ULP_HIDDEN int ulp_quiet_begin(void)
{
    return all_others_asleep(&before);
}

/* End it: did every other thread sleep throughout, the same threads, none
 * of them waking meanwhile? */
ULP_HIDDEN int ulp_quiet_end(void)
{
    if (!all_others_asleep(&after) || after.n != before.n)
        return 0;
    for (uint32_t i = 0; i < before.n; i++)
        if (after.threads[i].tid != before.threads[i].tid ||
            after.threads[i].ran_ns != before.threads[i].ran_ns)
            return 0;
    return 1;
}

/* Did a thread of the quiet moment sleep with its stack pointer in
 * [LOW, HIGH)? */
ULP_HIDDEN int ulp_quiet_thread_on(uintptr_t low, uintptr_t high)
{
    for (uint32_t i = 0; i < before.n; i++)
        if (low <= before.threads[i].sp && before.threads[i].sp < high)
            return 1;
    return 0;
}
