/* Thread stacks: where each stopped thread's stacks are, found by the agent.
 *
 * A COMMIT or REVERT needs, for every stopped thread, its own stack (the
 * mapping its thread pointer lies in: glibc puts a thread's control block
 * at the top of its stack; [stack] for the main thread) and the end of the
 * mapping its %rsp is in (transition.c searches from %rsp up to there).
 * The trigger used to find them in the text of /proc/PID/maps while every
 * thread waited: with 257 threads, 0.95 ms of Python in a 6 ms pause.  Here
 * the agent reads its own /proc/self/maps once, into a table of address
 * ranges, and looks each thread up by binary search: about 0.2 ms.  The
 * trigger asks for it with ULP_REQUEST_FILL_BOUNDS, leaving the three
 * fields 0, when the mailbox announces ULP_FEATURE_THREAD_BOUNDS.
 *
 * Every thread is stopped meanwhile, so the mappings are the ones the
 * threads stopped with.  Reads go into static buffers: no allocation while
 * a stopped thread may hold malloc's lock. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ulp_internal.h"

#define MAX_RANGES 65536        /* the kernel's default vm.max_map_count is 65530 */

static struct ulp_mapping ranges[MAX_RANGES];
static uint32_t nranges;
static struct ulp_mapping main_stack;
static uint64_t read_for = UINT64_MAX;  /* the mailbox serial of the request they were read for */

/* One line of /proc/self/maps, NUL-terminated ("LOW-HIGH PERMS OFFSET
 * DEV INODE PATH"): its mapping into the table. */
static void add_line(char *line)
{
    char *end;
    struct ulp_mapping m = {0};
    m.low = strtoul(line, &end, 16);
    if (*end != '-')
        return;
    m.high = strtoul(end + 1, &end, 16);
    if (*end != ' ' || nranges == MAX_RANGES || strlen(end) < 5)
        return;
    m.writable = end[1] == 'r' && end[2] == 'w';
    strtoul(end + 6, &end, 16);                 /* offset */
    strtoul(end, &end, 16);                     /* device major */
    if (*end == ':')
        strtoul(end + 1, &end, 16);             /* minor */
    m.inode = strtoul(end, &end, 10);
    ranges[nranges++] = m;
    size_t length = strlen(line);
    if (length >= 7 && strcmp(line + length - 7, "[stack]") == 0)
        main_stack = m;
}

/* Every mapping of the process into RANGES (the kernel lists them in
 * address order); -1 if /proc/self/maps cannot be read. */
static int read_ranges(void)
{
    static char text[65536];
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    nranges = 0;
    main_stack = (struct ulp_mapping){0};
    size_t kept = 0;
    for (;;) {
        ssize_t got = read(fd, text + kept, sizeof text - 1 - kept);
        if (got <= 0) {
            close(fd);
            return got < 0 ? -1 : 0;
        }
        size_t filled = kept + (size_t)got;
        text[filled] = '\0';
        char *line = text, *newline;
        while ((newline = strchr(line, '\n')) != NULL) {
            *newline = '\0';
            add_line(line);
            line = newline + 1;
        }
        kept = filled - (size_t)(line - text);
        memmove(text, line, kept);
    }
}

/* The mapping that holds ADDRESS, or one of {0, 0}. */
static struct ulp_mapping containing(uintptr_t address)
{
    uint32_t low = 0, high = nranges;
    while (low < high) {
        uint32_t middle = low + (high - low) / 2;
        if (ranges[middle].high <= address)
            low = middle + 1;
        else
            high = middle;
    }
    if (low < nranges && ranges[low].low <= address)
        return ranges[low];
    return (struct ulp_mapping){0};
}

/* Fill stack_low, stack_high and here_high of THREADS[0..N), every one of
 * them stopped; -1 if the mappings cannot be read. */
ULP_HIDDEN int ulp_fill_thread_stacks(struct ulp_request_thread *threads, uint32_t n)
{
    read_for = UINT64_MAX;
    if (read_ranges() != 0)
        return -1;
    read_for = __atomic_load_n(&ulp_mailbox.serial, __ATOMIC_RELAXED);
    pid_t main_thread = getpid();
    for (uint32_t i = 0; i < n; i++) {
        struct ulp_request_thread *t = &threads[i];
        struct ulp_mapping own = t->tid == main_thread ? main_stack
                                                       : containing(t->thread_pointer);
        t->stack_low = own.low;
        t->stack_high = own.high;
        t->here_high = containing(t->rsp).high;
    }
    return 0;
}

/* The mappings read for the request being handled (the mailbox's serial
 * counts answered requests; every thread stopped since), once: the search
 * for activations on unnoted stacks goes through them instead of asking
 * the kernel for each (foreign.c).  NULL if the request had the trigger
 * find the stacks. */
ULP_HIDDEN const struct ulp_mapping *ulp_take_fresh_mappings(uint32_t *n)
{
    if (read_for != __atomic_load_n(&ulp_mailbox.serial, __ATOMIC_RELAXED))
        return NULL;
    read_for = UINT64_MAX;
    *n = nranges;
    return ranges;
}
