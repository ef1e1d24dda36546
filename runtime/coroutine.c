/* Coroutine stacks: activations a commit cannot see on any thread.
 *
 * A commit judges each thread by the stacks it knows of: the one the thread
 * stopped on and the thread's own (transition.c).  A coroutine that entered
 * a library and then switched away (swapcontext) leaves its activation on a
 * third stack, live but on no thread.  Resumed after the commit, by this
 * thread or any other, it would make its nested calls in the new universe
 * of a thread that was never pending: one activation, two versions.
 *
 * So the runtime learns every stack made with makecontext(3), the C
 * library's one way to create one: the program's calls to makecontext come
 * here first (this definition interposes on glibc's, as the preloaded
 * runtime comes before it) and the stack is noted before glibc's runs.  A
 * commit then searches every noted stack, whole, on no thread or on one:
 * one holding a word of prepared code is *pending*, in the universe before
 * the commit, like a thread.  The tracker judges an entry whose return
 * address lies on a pending stack by that stack, whichever thread runs it
 * (tracker.c).  A pending thread that enters a library from a noted stack
 * that is not pending runs that activation in its own universe (nested in
 * the thread's live one), and marks the stack pending in it: whoever
 * resumes it later resumes it there.  A pending stack stops being pending
 * at an entry from outside with no word of prepared code above it, or when
 * the agent's tick finds no such word on it any more while no thread is
 * pending (no thread could mark it again).
 *
 * boost.context's make_fcontext is followed the same way (below).  Stacks
 * made otherwise (hand-written stack switches) are judged like these if
 * the program notes them itself (ulp_note_stack, exported); a commit
 * refuses while an activation waits on one it was not told of
 * (foreign.c).
 *
 * The table is changed under a mutex by makecontext only; a commit (every
 * other thread stopped, maybe one inside makecontext holding the mutex)
 * only tries the mutex and refuses to start (retry) if it is taken.  The
 * tracker reads entries without a lock: each has a sequence number, odd
 * while makecontext rewrites it. */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <ucontext.h>

#include "ulp_internal.h"


struct ulp_coroutine_stack {
    uint64_t seq;               /* odd while makecontext rewrites low/high */
    uintptr_t low, high;        /* 0, 0: a free entry */
    uint64_t universe;          /* while pending: the universe before the commit */
    int pending;
};

static struct ulp_coroutine_stack stacks[ULP_MAX_COROUTINE_STACKS];
static uint32_t nstacks;                /* entries in use are below this */
static int overflowed;                  /* a stack could not be noted */
static pthread_mutex_t stacks_lock = PTHREAD_MUTEX_INITIALIZER;

/* Code the tracker runs: with only the integer registers saved, and in
 * the section a commit counts as prepared code. */
#define TRACKER_CODE __attribute__((section("ulp_tracker_text"), target("general-regs-only")))

/* How many entries are pending: the tracker looks them up only if some are. */
ULP_HIDDEN uint32_t ulp_pending_coroutine_stacks;

/* Pending from now on, in UNIVERSE (any thread). */
TRACKER_CODE ULP_HIDDEN void ulp_mark_coroutine_stack(struct ulp_coroutine_stack *s,
                                                      uint64_t universe)
{
    int expected = 0;
    if (__atomic_load_n(&s->pending, __ATOMIC_ACQUIRE))
        return;
    __atomic_store_n(&s->universe, universe, __ATOMIC_RELAXED);
    if (__atomic_compare_exchange_n(&s->pending, &expected, 1, 0, __ATOMIC_RELEASE,
                                    __ATOMIC_RELAXED))
        __atomic_add_fetch(&ulp_pending_coroutine_stacks, 1, __ATOMIC_RELEASE);
}

/* Pending no more (any thread): the stack holds no live activation that
 * began before the commit. */
TRACKER_CODE ULP_HIDDEN void ulp_clear_coroutine_stack(struct ulp_coroutine_stack *s)
{
    int expected = 1;
    if (__atomic_compare_exchange_n(&s->pending, &expected, 0, 0, __ATOMIC_RELEASE,
                                    __ATOMIC_RELAXED))
        __atomic_sub_fetch(&ulp_pending_coroutine_stacks, 1, __ATOMIC_RELEASE);
}

/* --- makecontext ------------------------------------------------------------ */

static void rewrite(struct ulp_coroutine_stack *s, uintptr_t low, uintptr_t high)
{
    __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&s->low, low, __ATOMIC_RELAXED);
    __atomic_store_n(&s->high, high, __ATOMIC_RELAXED);
    __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELEASE);
}

/* A stack made on memory that a noted stack overlaps replaces that entry:
 * the coroutine that ran there is gone (its stack is a new one now), so a
 * pending entry is pending no more.  Tracker readers skip an entry while
 * it is rewritten, and take its bounds from one consistent read. */
static void note_stack(uintptr_t low, uintptr_t high)
{
    struct ulp_coroutine_stack *free_entry = NULL;
    for (uint32_t i = 0; i < nstacks; i++) {
        struct ulp_coroutine_stack *s = &stacks[i];
        int overlaps = s->low < high && low < s->high;
        if (overlaps)
            ulp_clear_coroutine_stack(s);
        if ((overlaps || s->high == 0) && !free_entry)
            free_entry = s;
        else if (overlaps)
            rewrite(s, 0, 0);
    }
    if (!free_entry && nstacks < ULP_MAX_COROUTINE_STACKS)
        free_entry = &stacks[nstacks];
    if (!free_entry) {
        __atomic_store_n(&overflowed, 1, __ATOMIC_RELEASE);
        return;
    }
    rewrite(free_entry, low, high);
    if (free_entry == &stacks[nstacks])
        __atomic_store_n(&nstacks, nstacks + 1, __ATOMIC_RELEASE);
}

/* For programs that make coroutine stacks otherwise than with makecontext
 * (their own stack switch, boost.context): [LOW, HIGH) is a stack a
 * coroutine will run on; call it before the coroutine first runs. */
ULP_EXPORT void ulp_note_stack(void *low, size_t size)
{
    uintptr_t start = (uintptr_t)low, end = start + size;
    if (start >= end)
        return;
    pthread_mutex_lock(&stacks_lock);
    note_stack(start, end);
    pthread_mutex_unlock(&stacks_lock);
}

typedef void (*makecontext_fn)(ucontext_t *, void (*)(void), int, ...);
ULP_HIDDEN makecontext_fn ulp_glibc_makecontext;

/* Called by makecontext (below) with the program's arguments. */
ULP_HIDDEN __attribute__((used)) void ulp_note_context(const ucontext_t *context)
{
    if (!ulp_glibc_makecontext)
        ulp_glibc_makecontext = (makecontext_fn)dlsym(RTLD_NEXT, "makecontext");
    ulp_note_stack(context->uc_stack.ss_sp, context->uc_stack.ss_size);
}

/* makecontext is variadic: note the stack, then go on to glibc's with every
 * argument register (and %al) and the stack as the caller left them. */
__asm__(".text\n"
        ".globl makecontext\n"
        ".type makecontext, @function\n"
        "makecontext:\n"
        "    pushq %rax\n    pushq %rdi\n    pushq %rsi\n    pushq %rdx\n"
        "    pushq %rcx\n    pushq %r8\n    pushq %r9\n"   /* 7 pushes: aligned for the call */
        "    call ulp_note_context\n"
        "    popq %r9\n    popq %r8\n    popq %rcx\n    popq %rdx\n"
        "    popq %rsi\n    popq %rdi\n    popq %rax\n"
        "    jmp *ulp_glibc_makecontext(%rip)\n"
        ".size makecontext, .-makecontext\n");

/* --- boost.context ---------------------------------------------------------- */

/* boost.context (and what is built on it: Boost.Coroutine2, Boost.Fiber,
 * folly's fibers, Boost.Asio's spawn) makes every stack with
 * make_fcontext(SP, SIZE, FN): SP is the stack's top, the stack
 * [SP - SIZE, SP).  The program's call reaches this definition first, as
 * for makecontext, when boost.context is a shared library (linked into
 * the program itself, the program's own definition wins and the stack
 * stays unnoted: a commit then waits while an activation waits there,
 * foreign.c).  Not variadic: plain C passes every argument on. */
typedef void *(*make_fcontext_fn)(void *sp, size_t size, void (*fn)(void));
ULP_EXPORT void *make_fcontext(void *sp, size_t size, void (*fn)(void));

/* The make_fcontext the caller at CALLER would have called without the
 * runtime: the next one in the global scope, or, for an object loaded
 * with RTLD_LOCAL whose boost.context is in its own scope only, the one
 * that object's scope holds.  NULL if there is none but this one. */
static make_fcontext_fn boost_make_fcontext_for(const void *caller)
{
    static make_fcontext_fn global;
    make_fcontext_fn found = __atomic_load_n(&global, __ATOMIC_ACQUIRE);
    if (found)
        return found;
    found = (make_fcontext_fn)dlsym(RTLD_NEXT, "make_fcontext");
    if (found) {
        __atomic_store_n(&global, found, __ATOMIC_RELEASE);
        return found;
    }
    Dl_info info;
    struct link_map *object = NULL;
    if (!dladdr1(caller, &info, (void **)&object, RTLD_DL_LINKMAP) || !object)
        return NULL;
    void *handle = dlopen(object->l_name[0] ? object->l_name : NULL, RTLD_LAZY | RTLD_NOLOAD);
    if (!handle)
        return NULL;
    found = (make_fcontext_fn)dlsym(handle, "make_fcontext");
    dlclose(handle);    /* the caller's object stays loaded: it is calling */
    return found == make_fcontext ? NULL : found;
}

ULP_EXPORT void *make_fcontext(void *sp, size_t size, void (*fn)(void))
{
    make_fcontext_fn next = boost_make_fcontext_for(__builtin_return_address(0));
    if (!next) {
        ulp_log_message(ULP_LOG_RUNTIME, 0, "make_fcontext called, but no boost.context "
                        "defines it: returned NULL");
        return NULL;
    }
    if ((uintptr_t)sp > size)
        ulp_note_stack((char *)sp - size, size);
    return next(sp, size, fn);
}

/* --- a commit ------------------------------------------------------------- */

/* Does [LOW, HIGH) hold a word of prepared code?  -1: not readable. */
static int holds_prepared_code(uintptr_t low, uintptr_t high)
{
    static uintptr_t words[8192];     /* the agent's; 64 KiB at a time */
    for (uintptr_t at = (low + 7) & ~(uintptr_t)7; at < high;) {
        size_t n = (high - at) / 8 < 8192 ? (high - at) / 8 : 8192;
        if (n == 0 || ulp_read_memory(at, words, n * 8) != 0)
            return n == 0 ? 0 : -1;
        for (size_t i = 0; i < n; i++)
            if (ulp_is_prepared_code(words[i]))
                return 1;
        at += n * 8;
    }
    return 0;
}

/* Before a commit changes anything, with every other thread stopped: can
 * its stacks be judged?  Takes the table's mutex until ulp_mark_coroutine_
 * stacks(); NULL, or why not. */
ULP_HIDDEN const char *ulp_coroutine_stacks_judgeable(void)
{
    if (pthread_mutex_trylock(&stacks_lock) != 0)
        return "a thread stopped while noting a coroutine stack (makecontext): retry";
    if (__atomic_load_n(&overflowed, __ATOMIC_ACQUIRE)) {
        pthread_mutex_unlock(&stacks_lock);
        return "more coroutine stacks (makecontext) than the runtime can follow";
    }
    return NULL;
}

/* The commit will not start after all: release the table. */
ULP_HIDDEN void ulp_coroutine_stacks_unjudged(void)
{
    pthread_mutex_unlock(&stacks_lock);
}

/* Does [LOW, HIGH) overlap the own stack of one of THREADS[0..N)?  Such a
 * "coroutine stack" (carved out of a thread's stack) is searched with the
 * thread, whose record covers it. */
static int on_a_thread_stack(uintptr_t low, uintptr_t high,
                             const struct ulp_request_thread *threads, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (threads[i].stack_low < high && low < threads[i].stack_high)
            return 1;
    return 0;
}

/* Does one of THREADS[0..N) run prepared code on [LOW, HIGH)?  Its
 * activation there may have left no word yet (its outermost frame has not
 * called out): its %rip is the only trace. */
static int runs_prepared_code_on(uintptr_t low, uintptr_t high,
                                 const struct ulp_request_thread *threads, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (low <= threads[i].rsp && threads[i].rsp < high && ulp_is_prepared_code(threads[i].rip))
            return 1;
    return 0;
}

/* Mark every noted stack that holds a word of prepared code, or on which a
 * stopped thread runs prepared code, pending, and every other one not, in
 * universe G (the one before the commit), and release the table.  A stack
 * that cannot be read any more is forgotten: it was freed.  THREADS[0..N):
 * the stopped threads, as the commit has them. */
ULP_HIDDEN void ulp_mark_coroutine_stacks(uint64_t g, const struct ulp_request_thread *threads,
                                          uint32_t n)
{
    for (uint32_t i = 0; i < nstacks; i++) {
        struct ulp_coroutine_stack *s = &stacks[i];
        if (s->high == 0 || on_a_thread_stack(s->low, s->high, threads, n))
            continue;
        int found = runs_prepared_code_on(s->low, s->high, threads, n) ? 1
                    : holds_prepared_code(s->low, s->high);
        if (found <= 0)         /* no live activation: the world is stopped */
            ulp_clear_coroutine_stack(s);
        if (found < 0)
            rewrite(s, 0, 0);
        else if (found > 0)
            ulp_mark_coroutine_stack(s, g);
    }
    pthread_mutex_unlock(&stacks_lock);
}

/* The agent's tick, when no thread is pending (none can mark a stack
 * again): a pending stack not readable any more (unmapped) is pending no
 * more; one with no word of prepared code left is pending no more if no
 * other thread ran while the tick looked (quiet.c: a thread running the
 * stack's activation may be at the one moment it has no word there) and
 * none slept with its stack pointer there.  Returns how many stay
 * pending. */
ULP_HIDDEN uint32_t ulp_coroutine_tick(int threads_pending)
{
    static uint8_t empty[ULP_MAX_COROUTINE_STACKS];
    if (threads_pending || !__atomic_load_n(&ulp_pending_coroutine_stacks, __ATOMIC_ACQUIRE) ||
        pthread_mutex_trylock(&stacks_lock) != 0)
        return __atomic_load_n(&ulp_pending_coroutine_stacks, __ATOMIC_ACQUIRE);
    int quiet = ulp_quiet_begin();
    int any_empty = 0;
    for (uint32_t i = 0; i < nstacks; i++) {
        struct ulp_coroutine_stack *s = &stacks[i];
        empty[i] = 0;
        if (!__atomic_load_n(&s->pending, __ATOMIC_ACQUIRE))
            continue;
        int found = holds_prepared_code(s->low, s->high);
        if (found < 0) {
            ulp_clear_coroutine_stack(s);
            rewrite(s, 0, 0);
        }
        empty[i] = found == 0;
        any_empty |= empty[i];
    }
    if (any_empty && quiet && ulp_quiet_end())
        for (uint32_t i = 0; i < nstacks; i++)
            if (empty[i] && !ulp_quiet_thread_on(stacks[i].low, stacks[i].high))
                ulp_clear_coroutine_stack(&stacks[i]);
    pthread_mutex_unlock(&stacks_lock);
    return __atomic_load_n(&ulp_pending_coroutine_stacks, __ATOMIC_ACQUIRE);
}

/* --- the tracker's questions (on any thread, maybe in a signal handler) ---- */

/* The noted stack that holds ADDRESS, or NULL, with its end in *HIGH as
 * one consistent read (no lock: an entry being rewritten is skipped). */
TRACKER_CODE ULP_HIDDEN struct ulp_coroutine_stack *ulp_coroutine_stack_of(uintptr_t address,
                                                                           uintptr_t *high)
{
    uint32_t n = __atomic_load_n(&nstacks, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++) {
        struct ulp_coroutine_stack *s = &stacks[i];
        uint64_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        uintptr_t low = __atomic_load_n(&s->low, __ATOMIC_RELAXED);
        uintptr_t end = __atomic_load_n(&s->high, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (!(seq & 1) && __atomic_load_n(&s->seq, __ATOMIC_RELAXED) == seq &&
            low <= address && address < end) {
            *high = end;
            return s;
        }
    }
    return NULL;
}

/* Is S pending?  Its universe in *UNIVERSE if so. */
TRACKER_CODE ULP_HIDDEN int ulp_coroutine_stack_pending(struct ulp_coroutine_stack *s,
                                                        uint64_t *universe)
{
    if (!__atomic_load_n(&s->pending, __ATOMIC_ACQUIRE))
        return 0;
    *universe = __atomic_load_n(&s->universe, __ATOMIC_RELAXED);
    return 1;
}
