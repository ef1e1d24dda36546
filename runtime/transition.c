/* Transitions: how threads move from one universe to the next
 * (docs/consistency.md, "Transitions"; the Linux kernel's livepatch
 * transition.c is the model).
 *
 * A commit or a revert runs here on the agent while the trigger holds every
 * other thread of the process stopped, and hands over, per thread, where it
 * stopped (%rip, %rsp), its thread pointer and its stacks.  For each
 * library the patch changes:
 *
 *   1. every descriptor of the library sends calls to the tracker
 *      (ulp_tracker, tracker.c), so that each thread is given its version;
 *   2. each thread that may be inside an activation of the library - it
 *      stopped in prepared code (the library's, a patch object's, the
 *      runtime's), or a word of its live stack points there - is marked
 *      pending in its record, in the universe it ran in; the others are
 *      not pending, and run in G from now on;
 *   3. then the caller publishes the new G.
 *
 * Pending threads leave their universe by themselves (tracker.c).  The
 * agent's tick finishes the transition once none is pending any more (or
 * the threads that were have ended): every descriptor then points at the
 * version of G again, and calls cost the trampoline only.
 *
 * The search is conservative: a stale word, or a value that happens to look
 * like an address of prepared code, keeps a thread pending longer, never
 * less. */
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ulp_internal.h"

/* --- prepared code: what a live activation leaves on a stack ------------------ */

#define MAX_CODE_RANGES 256

/* A function pointer to an exported function points at the start of its
 * trampoline: no return address or interrupted %rip of an activation does
 * (a thread there has not entered the function yet), so a word there says
 * nothing.  Any other word in the range may be one. */
struct code_range {
    uintptr_t low, high;
    uintptr_t trampolines_low, trampolines_high;
};

/* Appended by the agent only, published by the count; never removed (a
 * range whose object is gone only makes the search more cautious). */
static struct code_range code_ranges[MAX_CODE_RANGES];
static uint32_t ncode_ranges;
static struct code_range code_bounds = {UINTPTR_MAX, 0, 0, 0};
static int code_ranges_overflowed;

ULP_HIDDEN int ulp_is_prepared_code(uintptr_t word)
{
    if (word < __atomic_load_n(&code_bounds.low, __ATOMIC_ACQUIRE) ||
        word >= __atomic_load_n(&code_bounds.high, __ATOMIC_ACQUIRE))
        return 0;
    if (__atomic_load_n(&code_ranges_overflowed, __ATOMIC_ACQUIRE))
        return 1;   /* only the bounds are known: everything within them counts */
    uint32_t n = __atomic_load_n(&ncode_ranges, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++) {
        const struct code_range *r = &code_ranges[i];
        if (word - r->low >= r->high - r->low)
            continue;
        if (word - r->trampolines_low < r->trampolines_high - r->trampolines_low &&
            (word - r->trampolines_low) % ULP_TRAMPOLINE_SIZE == 0)
            return 0;   /* a function pointer */
        return 1;
    }
    return 0;
}

/* The bounds of every range of prepared code: no word outside is one. */
ULP_HIDDEN void ulp_prepared_code_bounds(uintptr_t *low, uintptr_t *high)
{
    *low = __atomic_load_n(&code_bounds.low, __ATOMIC_ACQUIRE);
    *high = __atomic_load_n(&code_bounds.high, __ATOMIC_ACQUIRE);
}

/* Call FN(LOW, HIGH, ARG) for every range of prepared code; -1 if only
 * their bounds are known (more ranges than the table holds). */
ULP_HIDDEN int ulp_for_each_code_range(void (*fn)(uintptr_t, uintptr_t, void *), void *arg)
{
    if (__atomic_load_n(&code_ranges_overflowed, __ATOMIC_ACQUIRE))
        return -1;
    uint32_t n = __atomic_load_n(&ncode_ranges, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++)
        fn(code_ranges[i].low, code_ranges[i].high, arg);
    return 0;
}

static void add_code_range(uintptr_t low, uintptr_t high, uintptr_t trampolines_low,
                           uintptr_t trampolines_high)
{
    if (low >= high)
        return;
    uint32_t n = ncode_ranges;
    for (uint32_t i = 0; i < n; i++)
        if (code_ranges[i].low <= low && high <= code_ranges[i].high &&
            code_ranges[i].trampolines_low == trampolines_low)
            return;
    /* bounds first: a reader inside them but past the count says "no" only
     * for a range no thread can be in yet (the caller's threads are stopped) */
    if (low < code_bounds.low)
        __atomic_store_n(&code_bounds.low, low, __ATOMIC_RELEASE);
    if (high > code_bounds.high)
        __atomic_store_n(&code_bounds.high, high, __ATOMIC_RELEASE);
    if (n == MAX_CODE_RANGES) {
        __atomic_store_n(&code_ranges_overflowed, 1, __ATOMIC_RELEASE);
        return;
    }
    code_ranges[n] = (struct code_range){low, high, trampolines_low, trampolines_high};
    __atomic_store_n(&ncode_ranges, n + 1, __ATOMIC_RELEASE);
}

static int add_executable_segments(struct dl_phdr_info *info, size_t size, void *object)
{
    (void)size;
    uintptr_t wanted = (uintptr_t)object;
    int found = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t low = info->dlpi_addr + ph->p_vaddr, high = low + ph->p_memsz;
        if (low <= wanted && wanted < high)
            found = 1;
    }
    if (!found)
        return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X))
            add_code_range(info->dlpi_addr + ph->p_vaddr,
                           info->dlpi_addr + ph->p_vaddr + ph->p_memsz, 0, 0);
    }
    return 1;
}

/* The executable segments of the object that contains ADDRESS. */
ULP_HIDDEN void ulp_add_code_of(const void *address)
{
    dl_iterate_phdr(add_executable_segments, (void *)address);
}

/* The tracker's code (entry.S, tracker.c): the linker marks its ends. */
extern const char __start_ulp_tracker_text[] ULP_HIDDEN, __stop_ulp_tracker_text[] ULP_HIDDEN;

/* --- starting a transition -------------------------------------------------- */

struct pending_thread {
    pid_t tid;
    int slot;
    struct ulp_thread_record *record;
};

/* The agent's, and a test's (ulp_test_transition) on another thread. */
static pthread_mutex_t transition_lock = PTHREAD_MUTEX_INITIALIZER;

/* Before an agent starts: none runs, so nothing holds the lock, but a fork
 * child inherits it locked if its parent's agent held it at the fork
 * (its first tick then waited forever: seen once in 2,001 children forked
 * while the parent's agent ticked at SCHED_IDLE on a loaded machine).
 * Application threads never take it. */
ULP_HIDDEN void ulp_transition_unlock_for_new_agent(void)
{
    pthread_mutex_init(&transition_lock, NULL);
}
/* No allocation: a commit runs while the application's threads are
 * stopped, maybe one of them inside malloc holding its lock. */
#define MAX_PENDING 4096
static struct pending_thread pending[MAX_PENDING];
static size_t npending;
static int in_transition[ULP_MAX_LIBS];

static void point_at_tracker(struct ulp_func_desc *fd)
{
    __atomic_store_n(&fd->current_delta, (int64_t)((uintptr_t)ulp_tracker - (uintptr_t)fd),
                     __ATOMIC_RELEASE);
}

static void point_at_version(struct ulp_func_desc *fd)
{
    uint64_t g = __atomic_load_n(&ulp_global_universe, __ATOMIC_ACQUIRE);
    __atomic_store_n(&fd->current_delta,
                     (int64_t)((uintptr_t)ulp_version_in(fd, g) - (uintptr_t)fd),
                     __ATOMIC_RELEASE);
}

static void for_each_descriptor(struct ulp_lib_desc *lib, void (*fn)(struct ulp_func_desc *))
{
    for (uint32_t i = 0; i < lib->nfuncs; i++)
        fn(ulp_lib_func(lib, i));
    ulp_for_each_private(lib, fn);
}

static int words_of_prepared_code(uintptr_t low, uintptr_t high)
{
    for (uintptr_t p = (low + 7) & ~(uintptr_t)7; p + 8 <= high; p += 8)
        if (ulp_is_prepared_code(*(const uintptr_t *)p))
            return 1;
    return 0;
}

/* Where the frames of T's own stack can end: glibc puts a thread's static
 * TLS and then its control block, where its thread pointer points, at the
 * top of the thread's stack mapping, so no frame lies above the thread
 * pointer (the control block's saved contexts are mangled).  The main
 * thread's control block is elsewhere: its stack ends with the mapping. */
static uintptr_t own_frames_end(const struct ulp_request_thread *t, uintptr_t from)
{
    if (from < t->thread_pointer && t->thread_pointer < t->stack_high)
        return t->thread_pointer;
    return t->stack_high;
}

/* May the stopped thread T be inside an activation?  Its current stack is
 * searched from %rsp up; when it stopped on another stack than its own (a
 * signal handler's, a coroutine's), its own stack is searched whole. */
static int may_be_inside(const struct ulp_request_thread *t)
{
    if (ulp_is_prepared_code(t->rip))
        return 1;
    if (!t->here_high || t->rsp > t->here_high)
        return 1;   /* the trigger could not tell where its stack ends */
    int on_own_stack = t->stack_low <= t->rsp && t->rsp < t->stack_high;
    if (words_of_prepared_code(t->rsp, on_own_stack ? own_frames_end(t, t->rsp)
                                                    : t->here_high))
        return 1;
    return !on_own_stack && words_of_prepared_code(t->stack_low,
                                                   own_frames_end(t, t->stack_low));
}

static int remember_pending(pid_t tid, int slot, struct ulp_thread_record *record)
{
    if (npending == MAX_PENDING)
        return -1;
    pending[npending++] = (struct pending_thread){tid, slot, record};
    return 0;
}

/* Mark the stopped thread T (its record REC) pending, in the universe it
 * ran in, if it may be inside; else not pending.  1 if pending. */
static int mark_thread(const struct ulp_request_thread *t, struct ulp_thread_record *rec,
                       uint64_t g)
{
    if (!may_be_inside(t)) {
        rec->pending = 0;
        return 0;
    }
    if (!rec->pending)
        rec->universe = g;      /* it ran every activation in G */
    rec->stack_low = t->stack_low;
    rec->stack_high = t->stack_high;
    rec->hint_slot = 0;
    rec->pending = 1;
    return 1;
}

ULP_HIDDEN void ulp_add_code_range(uintptr_t low, uintptr_t high)
{
    add_code_range(low, high, 0, 0);
}

static void add_library_code(const struct ulp_lib_desc *lib)
{
    if (ulp_is_main_program(lib)) {
        ulp_add_private_code(lib);
        return;
    }
    uintptr_t trampolines = (uintptr_t)lib + lib->trampolines_delta;
    uintptr_t trampolines_end = trampolines + (uintptr_t)lib->nfuncs * ULP_TRAMPOLINE_SIZE;
    add_code_range((uintptr_t)lib + lib->code_delta,
                   (uintptr_t)lib + lib->code_delta + lib->code_size, trampolines,
                   trampolines_end);
    /* past the library's own code: ulp-prepare adds them in a segment of their own */
    add_code_range(trampolines, trampolines_end, trampolines, trampolines_end);
}

/* Count the code of LIBS[0..NLIBS) and the tracker's as prepared code
 * (again: nothing is added twice). */
ULP_HIDDEN void ulp_know_code_of(struct ulp_lib_desc *const *libs, uint32_t nlibs)
{
    add_code_range((uintptr_t)__start_ulp_tracker_text, (uintptr_t)__stop_ulp_tracker_text, 0, 0);
    for (uint32_t k = 0; k < nlibs; k++)
        add_library_code(libs[k]);
}

ULP_HIDDEN void ulp_thread_index_clear(struct ulp_thread_index *index,
                                       const struct ulp_request_thread *threads, uint32_t n,
                                       uint64_t (*key)(const struct ulp_request_thread *t))
{
    uint32_t slots = 16;
    while (slots < 2 * n && slots < ULP_THREAD_INDEX_SLOTS)
        slots *= 2;
    index->threads = threads;
    index->key = key;
    index->mask = slots - 1;
    memset(index->slots, 0, slots * sizeof index->slots[0]);
}

/* The slot of the thread whose key is KEY, or the free one where it goes. */
ULP_HIDDEN uint32_t *ulp_thread_index_slot(struct ulp_thread_index *index, uint64_t key)
{
    uint32_t at = (uint32_t)((key * 0x9e3779b97f4a7c15ULL) >> 40) & index->mask;
    while (index->slots[at] != 0 && index->key(&index->threads[index->slots[at] - 1]) != key)
        at = (at + 1) & index->mask;
    return &index->slots[at];
}

static uint64_t thread_pointer_of(const struct ulp_request_thread *t)
{
    return t->thread_pointer;
}

/* Do two of the stopped THREADS[0..N) share one thread pointer (a raw
 * clone that kept its creator's TLS)?  They would share one record, and
 * one's entry could end the other's pending state in the middle of its
 * activation: a commit waits until one has ended.  NULL, or why, in
 * MESSAGE. */
ULP_HIDDEN const char *ulp_threads_sharing_a_record(const struct ulp_request_thread *threads,
                                                    uint32_t n, char *message, size_t size)
{
    static struct ulp_thread_index by_pointer;  /* the agent's */
    ulp_thread_index_clear(&by_pointer, threads, n, thread_pointer_of);
    for (uint32_t i = 0; i < n; i++) {
        if (!threads[i].thread_pointer)
            continue;
        uint32_t *slot = ulp_thread_index_slot(&by_pointer, threads[i].thread_pointer);
        if (*slot != 0) {
            snprintf(message, size, "threads %d and %d share one thread pointer (a raw "
                     "clone without TLS of its own): the runtime cannot tell their "
                     "activations apart; retry once one of them has ended",
                     threads[*slot - 1].tid, threads[i].tid);
            return message;
        }
        *slot = i + 1;
    }
    return NULL;
}

/* Start a transition of the libraries LIBS[0..NLIBS) (in table slots
 * SLOTS), with every thread but the agent stopped as THREADS[0..N)
 * describe, after ulp_coroutine_stacks_judgeable() said yes.  The caller
 * publishes the next G afterwards.  The code of every library is known
 * before any thread is judged: a thread inside one of them stays pending
 * in all, so a chain of calls through several keeps one universe.  -1 if more threads are pending than the agent can remember
 * (the transition is then started, but the agent cannot end it: calls go
 * through the tracker until a later transition of the library ends). */
ULP_HIDDEN int ulp_begin_transition(struct ulp_lib_desc *const *libs, const int *slots,
                                    uint32_t nlibs, const struct ulp_request_thread *threads,
                                    uint32_t n)
{
    uint64_t g = __atomic_load_n(&ulp_global_universe, __ATOMIC_ACQUIRE);
    int status = 0;
    pthread_mutex_lock(&transition_lock);
    ulp_know_code_of(libs, nlibs);
    for (uint32_t k = 0; k < nlibs; k++)
        for_each_descriptor(libs[k], point_at_tracker);
    ulp_mark_coroutine_stacks(g, threads, n);
    /* one record per thread, for every library: judged once; remembered
     * per library, whose transition it holds open */
    for (uint32_t i = 0; i < n; i++) {
        struct ulp_thread_record *rec = (struct ulp_thread_record *)(uintptr_t)(
            threads[i].thread_pointer + ulp_thread_record_offset());
        if (!threads[i].thread_pointer || !mark_thread(&threads[i], rec, g))
            continue;
        for (uint32_t k = 0; k < nlibs; k++)
            if (remember_pending(threads[i].tid, slots[k], rec) != 0)
                status = -1;
    }
    if (status == 0)
        for (uint32_t k = 0; k < nlibs; k++)
            in_transition[slots[k]] = 1;
    pthread_mutex_unlock(&transition_lock);
    return status;
}

/* For tests (tests/c/cm_step_app.c): what a commit publishing UNIVERSE does
 * to every registered library, with THREADS[0..N) stopped (or calling). */
ULP_EXPORT void ulp_test_transition(const struct ulp_request_thread *threads, uint32_t n,
                                    uint64_t universe)
{
    struct ulp_lib_desc *libs[ULP_MAX_LIBS];
    int slots[ULP_MAX_LIBS];
    uint32_t nlibs = 0;
    for (int slot = 0; slot < ULP_MAX_LIBS; slot++) {
        if ((libs[nlibs] = ulp_library_in_slot(slot)) != NULL)
            slots[nlibs++] = slot;
    }
    if (ulp_coroutine_stacks_judgeable() != NULL)
        return;
    ulp_begin_transition(libs, slots, nlibs, threads, n);
    __atomic_store_n(&ulp_global_universe, universe, __ATOMIC_RELEASE);
}

/* --- ending it ------------------------------------------------------------------ */

static int thread_alive(pid_t tid)
{
    return syscall(SYS_tgkill, getpid(), tid, 0) == 0 || errno != ESRCH;
}

/* Copy [ADDRESS, ADDRESS + SIZE) of this process into BUFFER without
 * trusting that it is mapped (a thread's stack, a coroutine's, may have
 * been unmapped since); 0, or -1 if it could not be read whole. */
ULP_HIDDEN int ulp_read_memory(uintptr_t address, void *buffer, size_t size)
{
    struct iovec local = {buffer, size};
    struct iovec remote = {(void *)address, size};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)size ? 0 : -1;
}

/* Read N pieces of the process's own memory at once: the bytes read, which
 * end where the first piece that cannot be read begins (-1: the first). */
ULP_HIDDEN ssize_t ulp_read_memory_vector(const struct iovec *local, const struct iovec *remote,
                                         size_t n)
{
    return process_vm_readv(getpid(), local, n, remote, n, 0);
}

/* Read a pending flag without trusting that the thread's memory is still
 * there: a thread that ended may have had its stack unmapped. */
static int still_pending(const struct pending_thread *p)
{
    uint64_t value = 0;
    if (ulp_read_memory((uintptr_t)&p->record->pending, &value, sizeof value) != 0)
        return thread_alive(p->tid);
    return value != 0 && thread_alive(p->tid);
}

static void end_transition_of(struct ulp_lib_desc *lib)
{
    for_each_descriptor(lib, point_at_version);
}

/* The agent's tick: forget threads that left their universe or ended, and
 * end the transitions no thread is pending in any more.  Returns how many
 * are still under way. */
ULP_HIDDEN int ulp_transition_tick(void)
{
    int busy[ULP_MAX_LIBS] = {0}, open = 0;
    size_t kept = 0;
    pthread_mutex_lock(&transition_lock);
    for (size_t i = 0; i < npending; i++) {
        if (!still_pending(&pending[i]))
            continue;
        busy[pending[i].slot] = 1;
        pending[kept++] = pending[i];
    }
    npending = kept;
    /* a pending coroutine stack may be resumed by any thread, in any
     * library: every transition stays open until none is left */
    int coroutines = ulp_coroutine_tick(npending > 0) > 0;
    for (int slot = 0; slot < ULP_MAX_LIBS; slot++) {
        if (!in_transition[slot])
            continue;
        if (busy[slot] || coroutines) {
            open++;
            continue;
        }
        /* a copy unloaded since (and maybe another mapped at its address,
         * registered elsewhere or not yet) has no transition to end */
        ulp_with_library_in_slot(slot, end_transition_of);
        in_transition[slot] = 0;
    }
    pthread_mutex_unlock(&transition_lock);
    return open;
}

/* The library in SLOT is gone: nothing of it is pending any more. */
ULP_HIDDEN void ulp_transition_forget(int slot)
{
    size_t kept = 0;
    pthread_mutex_lock(&transition_lock);
    for (size_t i = 0; i < npending; i++)
        if (pending[i].slot != slot)
            pending[kept++] = pending[i];
    npending = kept;
    in_transition[slot] = 0;
    pthread_mutex_unlock(&transition_lock);
}

/* Is a transition of the library in SLOT under way (for STATUS)? */
ULP_HIDDEN int ulp_in_transition(int slot)
{
    return slot >= 0 && slot < ULP_MAX_LIBS && in_transition[slot];
}
