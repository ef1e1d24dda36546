/* The applied patches, where a reader outside the process finds them.
 *
 * `ulp patches` and `ulp check` read a process through /proc/PID/mem
 * without stopping a thread or asking the agent (trigger/snapshot.py): they
 * work while a debugger holds the process or a trigger works on it.  The
 * runtime's list of patches (patch.c) is private; this table repeats what
 * an operator asks of it (which patch, in which library, since when, from
 * which patch object) in the layout runtime/ulp_abi.h documents, at the
 * address the mailbox gives.
 *
 * Only the agent writes it, after each change of the applied set (a COMMIT,
 * a REVERT, a library forgotten).  A reader cannot take a lock: the
 * generation is odd while the agent rewrites the table, and a reader that
 * sees it odd, or changed by the end of its read, reads again (a sequence
 * lock).  The pages stay untouched, and cost nothing, until a first patch. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ulp_internal.h"

static struct ulp_applied_table table = {.magic = ULP_APPLIED_MAGIC};

ULP_HIDDEN uint64_t ulp_applied_table_address(void)
{
    return (uint64_t)(uintptr_t)&table;
}

ULP_HIDDEN uint64_t ulp_applied_now(void)
{
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0)
        return 0;
    return (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
}

/* Begin a rewrite: readers retry until ulp_applied_end(). */
ULP_HIDDEN void ulp_applied_begin(void)
{
    __atomic_store_n(&table.generation, table.generation + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    table.count = 0;
    table.more = 0;
}

ULP_HIDDEN void ulp_applied_add(const struct ulp_applied_patch *entry)
{
    if (table.count < ULP_APPLIED_MAX)
        table.entries[table.count++] = *entry;
    else
        table.more++;
}

ULP_HIDDEN void ulp_applied_end(void)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&table.generation, table.generation + 1, __ATOMIC_RELEASE);
}
