/* The tracker: which version of a function a thread runs during a
 * transition (docs/consistency.md has the argument in full).
 *
 * Outside transitions every thread runs the newest versions, and a call
 * into a prepared library costs the trampoline's few instructions: nothing
 * is recorded.  A commit (transition.c) starts a transition with every
 * thread stopped: a thread that may be inside an activation of the library
 * (its code, or a word pointing into code of the library, of a patch object
 * or of the runtime, anywhere on its live stack) is marked pending and
 * keeps the universe it ran in; every other thread takes the new one.  The
 * library's descriptors then send every call here, until no thread is
 * pending any more.
 *
 * The one rule everything rests on:
 *
 *   A pending thread leaves its universe only at an entry from outside the
 *   library whose stack above holds no word of any prepared code: then no
 *   activation it began is live, since a live one would have left its
 *   return address (or, for a signal, its interrupted %rip) there.
 *
 * A word that only looks like such an address (a stale one, data) keeps
 * the thread pending a little longer: a delay, never a mix.  A thread that
 * is not pending runs every activation in G, the global universe, which
 * changes only during a commit, with every thread stopped.
 *
 * Runs at a function entry on any thread, maybe in a signal handler that
 * interrupted this very code: no vector registers, no locks, no calls into
 * other libraries, no system calls (a seccomp filter may forbid them). */
#pragma GCC target("general-regs-only")

#include "ulp_internal.h"

#define TRACKER_CODE __attribute__((section("ulp_tracker_text")))

TRACKER_CODE static struct ulp_thread_record *record_of(const struct ulp_func_desc *fd)
{
    char *thread_pointer;
    __asm__("movq %%fs:0, %0" : "=r"(thread_pointer));
    return (struct ulp_thread_record *)(thread_pointer + fd->tls_offset);
}

/* The version of FD valid in UNIVERSE (the original body is valid in all). */
TRACKER_CODE ULP_HIDDEN void *ulp_version_in(const struct ulp_func_desc *fd, uint64_t universe)
{
    const struct ulp_version *v = __atomic_load_n(&fd->versions, __ATOMIC_ACQUIRE);
    while (!(v->applied_at <= universe && universe < v->reverted_at))
        v = v->next;
    return v->target;
}

/* Does [SLOT + 8, HIGH) hold a word of prepared code? */
TRACKER_CODE static int prepared_code_above(uintptr_t slot, uintptr_t high)
{
    for (uintptr_t p = slot + 8; p < high; p += 8)
        if (ulp_is_prepared_code(*(volatile const uintptr_t *)p))
            return 1;
    return 0;
}

/* Does the stack above SLOT (the return address of an entry from outside,
 * on the stack the commit saw) hold a word of prepared code?  1 also when
 * it cannot look (a misaligned SLOT). */
TRACKER_CODE static int may_be_inside(struct ulp_thread_record *rec, uintptr_t slot)
{
    uintptr_t high = rec->stack_high;
    if (slot & 7)
        return 1;
    uintptr_t hint = rec->hint_slot;
    if (hint > slot && hint < high && !(hint & 7)
        && *(volatile const uintptr_t *)hint == ~rec->hint_word)
        return 1;
    for (uintptr_t p = slot + 8; p < high; p += 8) {
        uintptr_t word = *(volatile const uintptr_t *)p;
        if (ulp_is_prepared_code(word)) {
            /* a handler interrupting these stores only finds a hint that
             * does not match, and searches itself.  Kept inverted: the
             * record lies in the thread's static TLS, at the top of its
             * stack mapping, where a search would find the word itself. */
            rec->hint_slot = 0;
            rec->hint_word = ~word;
            rec->hint_slot = p;
            return 1;
        }
    }
    return 0;
}

/* Is the entry at SLOT, called from CALLER, inside an activation that
 * lives on the coroutine stack ending at HIGH: called from prepared code,
 * or with a word of it above (or SLOT misaligned: it cannot look)? */
TRACKER_CODE static int inside_activation_on(const struct ulp_func_desc *fd, uintptr_t slot,
                                             uintptr_t caller, uintptr_t high)
{
    return caller - fd->code_start < fd->code_size || ulp_is_prepared_code(caller) ||
           (slot & 7) || prepared_code_above(slot, high);
}

/* An entry at SLOT on the pending coroutine stack S (coroutine.c) ending
 * at HIGH, pending in UNIVERSE: judged like a pending thread's, by the
 * stack, whichever thread runs it now. */
TRACKER_CODE static uint64_t universe_on_pending_stack(struct ulp_coroutine_stack *s,
                                                        uintptr_t high, uint64_t universe,
                                                        const struct ulp_func_desc *fd,
                                                        uintptr_t slot, uint64_t g)
{
    if (inside_activation_on(fd, slot, *(const uintptr_t *)slot, high))
        return universe;
    ulp_clear_coroutine_stack(s);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return g;
}

/* A pending thread (in UNIVERSE) enters at SLOT, off the stacks the commit
 * saw.  On an alternate signal stack: nested in the thread's live
 * activation, its universe.  On a coroutine's noted stack (not pending: an
 * entry on a pending one is judged by the stack): inside an activation
 * that lives on that stack, that activation began after the commit, in G
 * (begun in UNIVERSE, it would have marked the stack); else a new
 * activation, nested in the thread's, in its universe, which the stack
 * keeps from now on, whichever thread resumes it. */
TRACKER_CODE static uint64_t universe_off_own_stack(uint64_t universe,
                                                    const struct ulp_func_desc *fd,
                                                    uintptr_t slot, uintptr_t caller, uint64_t g)
{
    uintptr_t high;
    struct ulp_coroutine_stack *s = ulp_coroutine_stack_of(slot, &high);
    if (!s)
        return universe;
    if (inside_activation_on(fd, slot, caller, high))
        return g;
    ulp_mark_coroutine_stack(s, universe);
    return universe;
}

/* The universe an entry whose return address is at SLOT runs in, for a
 * thread whose record is REC, when G is G. */
TRACKER_CODE static uint64_t universe_of_entry(struct ulp_thread_record *rec, const struct ulp_func_desc *fd,
                                  uintptr_t slot, uint64_t g)
{
    if (__atomic_load_n(&ulp_pending_coroutine_stacks, __ATOMIC_RELAXED)) {
        uintptr_t high;
        uint64_t on_stack;
        struct ulp_coroutine_stack *s = ulp_coroutine_stack_of(slot, &high);
        if (s && ulp_coroutine_stack_pending(s, &on_stack))
            return universe_on_pending_stack(s, high, on_stack, fd, slot, g);
    }
    if (!__atomic_load_n(&rec->pending, __ATOMIC_RELAXED))
        return g;
    uint64_t universe = rec->universe;
    uintptr_t caller = *(const uintptr_t *)slot;
    if (slot < rec->stack_low || slot >= rec->stack_high)
        return universe_off_own_stack(universe, fd, slot, caller, g);
    if (caller - fd->code_start < fd->code_size)
        return universe;        /* from the library itself: nested */
    /* from a patch object (a replacement runs inside an activation) or any
     * prepared code, or with prepared code on the stack above: maybe nested */
    if (ulp_is_prepared_code(caller) || may_be_inside(rec, slot))
        return universe;
    __atomic_store_n(&rec->pending, 0, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return g;
}

/* ulp_tracker (entry.S) calls this for an entry into FD whose return
 * address is at SLOT; it returns where the call goes.  G is read before and
 * after the choice: a commit between the two (it stopped this thread here)
 * may have marked the thread pending, so the choice is made again. */
TRACKER_CODE ULP_HIDDEN void *ulp_choose_version(const struct ulp_func_desc *fd, uintptr_t slot)
{
    struct ulp_thread_record *rec = record_of(fd);
    for (;;) {
        uint64_t g = __atomic_load_n(&ulp_global_universe, __ATOMIC_ACQUIRE);
        void *target = ulp_version_in(fd, universe_of_entry(rec, fd, slot, g));
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&ulp_global_universe, __ATOMIC_ACQUIRE) == g)
            return target;
    }
}
