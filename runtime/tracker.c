/* The tracker's judgment: is an entry into a prepared library external (the
 * thread takes the global universe) or nested (it keeps its universe)?
 *
 * entry.S handles the common cases and calls here, with every register
 * saved, for an entry from outside the library (its return address is not
 * in the library's code) that it cannot settle alone.  The record is then
 * claimed by this entry (record->claim != 0), so nothing else writes it: a
 * signal handler that enters the library meanwhile goes to
 * ulp_judge_claimed_entry, which writes nothing.
 *
 * The record keeps one anchor per live activation entered from outside:
 * the stack slot of its return address and the value stored there.  The
 * one rule everything rests on:
 *
 *   An entry is judged external only when no anchor is live, and an anchor
 *   is judged dead only when its activation has certainly returned.
 *
 * Judging a dead anchor live (a stale return address still in memory, a
 * slot too far away to read safely) only delays migration: the entry is
 * nested, keeps the thread's universe, and pushes its own anchor, which
 * stays live for as long as its own activation.  So an activation never
 * changes universe, whatever the memory around its anchors does.
 * docs/consistency.md has the argument per case.
 *
 * Runs at a function entry on any thread, maybe in a signal handler: no
 * vector registers, no locks, no calls, no system calls. */
#pragma GCC target("general-regs-only")

#include "ulp_internal.h"

static int on_altstack(uintptr_t address)
{
    return ulp_altstack.low <= address && address < ulp_altstack.high;
}

/* Has the frame whose return address was at SLOT certainly returned, as the
 * stack pointer RSP of a later entry shows by its position alone?  On one
 * stack, a slot at or below RSP belongs to a popped frame.  A slot on the
 * alternate signal stack seen from elsewhere belongs to a handler that has
 * left it; a slot elsewhere seen from the alternate stack belongs to an
 * activation the handler may have interrupted. */
static int returned_by_position(uintptr_t slot, uintptr_t rsp)
{
    if (on_altstack(slot) != on_altstack(rsp))
        return on_altstack(slot);
    return slot <= rsp;
}

/* Seen from an entry whose return address is at RSP, may the activation
 * anchored at ANCHOR still be live?  0 only when it has certainly returned. */
static int may_be_live(const struct ulp_anchor *anchor, uintptr_t rsp)
{
    uintptr_t slot = anchor->slot;
    if (returned_by_position(slot, rsp))
        return 0;
    if (slot < rsp || slot - rsp > NEAR_SLOT_DISTANCE)
        return 1;   /* another stack, maybe gone: not read (a delay at worst) */
    /* Its return-address slot is overwritten once it has returned. */
    return *(volatile const uintptr_t *)slot == anchor->ret;
}

static void release(struct ulp_thread_record *record)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&record->claim, 0, __ATOMIC_RELAXED);
}

/* RECORD is claimed by this entry, whose return address is at RSP; the
 * return address is outside the library.  Returns the universe the entry
 * runs in and releases the claim. */
ULP_HIDDEN uint64_t ulp_judge_entry(struct ulp_thread_record *record, uintptr_t rsp)
{
    uint64_t depth = record->depth <= ULP_MAX_ANCHORS ? record->depth : ULP_MAX_ANCHORS;
    uint64_t universe;

    if (record->depth > ULP_MAX_ANCHORS) {
        /* Saturated: anchors were lost, of activations inside the innermost
         * one kept: every entry is nested until that one has returned. */
        if (!returned_by_position(record->anchors[depth - 1].slot, rsp)) {
            universe = record->universe;
            release(record);
            return universe;
        }
    }
    while (depth > 0 && !may_be_live(&record->anchors[depth - 1], rsp))
        depth--;

    struct ulp_anchor self = {rsp, *(const uintptr_t *)rsp};
    if (depth == 0) {
        record->universe = __atomic_load_n(&ulp_global_universe, __ATOMIC_ACQUIRE);
        record->anchors[0] = self;
        record->depth = 1;
    } else if (depth < ULP_MAX_ANCHORS) {
        record->anchors[depth] = self;
        record->depth = depth + 1;
    } else {
        record->depth = ULP_MAX_ANCHORS + 1;
    }
    universe = record->universe;
    release(record);
    return universe;
}

/* An entry from outside found RECORD claimed.  Either it interrupted the
 * claimer (it runs in a signal handler that arrived during the update):
 * then it writes nothing and runs in the record's universe, which nothing
 * changes until the handler returns.  Or the claimer is gone (a handler
 * left it with longjmp): its frame is below this entry's, so this entry
 * takes the claim over and judges normally. */
ULP_HIDDEN uint64_t ulp_judge_claimed_entry(struct ulp_thread_record *record, uintptr_t rsp)
{
    if (!returned_by_position(record->claim, rsp))
        return record->universe;
    record->claim = rsp;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return ulp_judge_entry(record, rsp);
}
