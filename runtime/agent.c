/* The agent: a thread of the runtime that waits in a known state, holding no
 * lock, for the trigger to make it call ulp_agent_dispatch.  Loading a patch
 * (open, dlopen, malloc) therefore runs on a thread that may take locks, while
 * application threads keep running.
 *
 * The agent never keeps the process alive: it wakes at least every second, and
 * when it finds itself the last live thread it returns from its start
 * routine, so glibc ends the process as it would have without it (exit(0)
 * from the last thread).  ULP_AGENT=off in the environment starts no agent
 * at all: the process stays exactly as single-threaded as without the
 * runtime, and cannot be patched (docs/design.md). */
#include <dirent.h>
#include <fcntl.h>
#include <link.h>
#include <stddef.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ulp_internal.h"

ULP_EXPORT struct ulp_mailbox ulp_mailbox = {
    .magic = ULP_MAILBOX_MAGIC,
    .abi_version = ULP_ABI_VERSION,
    .state = ULP_AGENT_OFF,
};

/* What `ulp patches` needs to find a thread's records without stopping it
 * (ulp/snapshot.py): a thread's thread pointer (%fs:0, where %fs-relative
 * TLS offsets such as a function descriptor's tls_offset start) is its
 * robust-list head minus this offset, and get_robust_list(TID) gives that
 * head to any process allowed to read the thread (PTRACE_MODE_READ).  glibc
 * registers &pthread->robust_head for every thread, and the thread pointer
 * is the pthread itself, so the offset is the same for every thread: it is
 * measured once, on the thread that loads the runtime.  0: unknown. */
ULP_EXPORT struct {
    char magic[8];
    uint32_t version;
    uint32_t reserved;
    int64_t robust_head_offset;
} ulp_thread_layout = {.magic = "ULPTHRD", .version = 1};

static void measure_thread_layout(void)
{
    void *head = NULL;
    size_t length = 0;
    char *thread_pointer;
    __asm__("movq %%fs:0, %0" : "=r"(thread_pointer));
    if (syscall(SYS_get_robust_list, 0, &head, &length) == 0 && head)
        ulp_thread_layout.robust_head_offset = (char *)head - thread_pointer;
}

/* The trigger runs each call on this stack, not on the agent's own, so the
 * agent's frames survive even a trigger that dies in the middle. */
static char call_stack[256 * 1024] __attribute__((aligned(64)));

/* The agent's wait between two ticks.  It starts short and doubles up to
 * the longest after every tick that found nothing to do, and starts short
 * again after one that did (bound PLT slots of a library registered or
 * lazily resolved since; rebind.c).  A library's own calls then pass its
 * trampolines for a few milliseconds after it is first called, not for up
 * to the longest wait: SQLite's speedtest1, 0.4 s long, ran 4% slower with
 * the runtime when the first tick came only after 250 ms.
 *
 * After a request the wait is the shortest once: that tick lets go of the
 * libraries a COMMIT or REVERT kept pinned and ends a transition no thread
 * is pending in (patch.c, transition.c).  If nothing is left to do then,
 * the wait goes back to what it was before the request; while a transition
 * stays open it doubles from the shortest.  Doubling up from 1 ms after
 * every request made ten ticks in the second after it, at normal priority,
 * for nothing: with 4,000 idle processes patched at once, about as much
 * CPU as the trigger's own work on them (docs/trigger.md, "Speed"). */
#define SHORTEST_WAIT_NS 1000000L       /* 1 ms */
#define LONGEST_WAIT_NS 999000000L      /* about a second: ulp_agent_timeout's tv_sec stays 0 */

ULP_HIDDEN long ulp_agent_wait_ns = SHORTEST_WAIT_NS;
static long wait_before_request;       /* 0: no request since the last tick that found work */

static void set_wait(long wait)
{
    ulp_agent_wait_ns = wait < LONGEST_WAIT_NS ? wait : LONGEST_WAIT_NS;
}

static void wait_after_request(void)
{
    if (!wait_before_request)
        wait_before_request = ulp_agent_wait_ns;
    ulp_agent_wait_ns = SHORTEST_WAIT_NS;
}

static void next_wait(int found_work, int transitions_open)
{
    long doubled = 2 * ulp_agent_wait_ns;
    if (found_work) {
        wait_before_request = 0;
        set_wait(SHORTEST_WAIT_NS);
    } else if (wait_before_request && !transitions_open) {
        set_wait(wait_before_request > doubled ? wait_before_request : doubled);
        wait_before_request = 0;
    } else {
        set_wait(doubled);
    }
}

/* Where the idle loop keeps the agent's own stack pointer while a request
 * runs on call_stack, and the timeout of its wait (rewritten before each
 * wait: the kernel writes the time left into it when the wait is
 * interrupted). */
ULP_HIDDEN uintptr_t ulp_agent_home;
ULP_HIDDEN struct {
    long seconds;
    long nanoseconds;
} ulp_agent_timeout;

/* The wait right after a COMMIT or REVERT sent with every other thread
 * stopped: the trigger stops the agent there and puts it back into the
 * wait it interrupted.  Long, because the agent must not tick before the
 * trigger has it again: the other threads are still stopped, maybe one
 * holding the loader's lock, which the tick takes (a trigger slowed down by
 * a loaded machine found the agent stuck in its tick, and reported RETRY
 * for a revert that was done).  Only a trigger that died or gave up in
 * between leaves the agent asleep this long, once.  After other requests
 * the agent waits as usual. */
#define COLLECT_WAIT_SECONDS 10
ULP_HIDDEN struct {
    long seconds;
    long nanoseconds;
} ulp_agent_collect_timeout;
ULP_HIDDEN long ulp_agent_collect_seconds;     /* 0: the request ran with the world running */

ULP_HIDDEN uint8_t ulp_agent_xsave[4096] __attribute__((aligned(64)));
ULP_HIDDEN int ulp_agent_ending;

int ulp_agent_idle(void);
void ulp_agent_resume(void) __attribute__((noreturn));
extern char ulp_agent_wait_return[];

/* int ulp_agent_idle(void): wait, look around, wait again; returns only
 * when the agent should end.  The wait is the only ppoll the agent makes,
 * and it makes it with nothing on the stack that a request could damage:
 * the trigger interrupts the agent there and restores it there afterwards.
 * ulp_agent_resume() comes back into the loop on the agent's own stack
 * after a request (whether or not a trigger is still there to restore it). */
__asm__(".text\n"
        ".globl ulp_agent_idle\n"
        ".hidden ulp_agent_idle\n"
        ".type ulp_agent_idle, @function\n"
        "ulp_agent_idle:\n"
        "    pushq %rbx\n    pushq %rbp\n    pushq %r12\n"
        "    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    subq $8, %rsp\n"                       /* 16-byte aligned for calls */
        "    movq %rsp, ulp_agent_home(%rip)\n"
        "ulp_agent_wait:\n"
        "    movq $0, ulp_agent_timeout(%rip)\n"
        "    movq ulp_agent_wait_ns(%rip), %rcx\n"  /* clobbered by syscall anyway */
        "    movq %rcx, ulp_agent_timeout+8(%rip)\n"
        "    leaq ulp_agent_timeout(%rip), %rdx\n"
        "ulp_agent_ppoll:\n"                      /* the timeout in %rdx */
        "    movl $" "271" ", %eax\n"               /* SYS_ppoll */
        "    xorl %edi, %edi\n"
        "    xorl %esi, %esi\n"
        "    xorl %r10d, %r10d\n"
        "    xorl %r8d, %r8d\n"
        "    syscall\n"
        ".globl ulp_agent_wait_return\n"
        ".hidden ulp_agent_wait_return\n"
        "ulp_agent_wait_return:\n"
        /* the tick runs C code: keep every register as it was, so that the
         * agent's state seen by a tracer does not change while it idles */
        "    pushq %rax\n    pushq %rcx\n    pushq %rdx\n    pushq %rsi\n    pushq %rdi\n"
        "    pushq %r8\n    pushq %r9\n    pushq %r10\n    pushq %r11\n    subq $8, %rsp\n"
        "    movl $" "0xe7" ", %eax\n"       /* x87 SSE AVX AVX-512, as enabled in XCR0 */
        "    xorl %edx, %edx\n"
        "    xsave64 ulp_agent_xsave(%rip)\n"
        "    call ulp_agent_tick\n"
        "    movl %eax, ulp_agent_ending(%rip)\n"
        "    movl $" "0xe7" ", %eax\n"
        "    xorl %edx, %edx\n"
        "    xrstor64 ulp_agent_xsave(%rip)\n"
        "    addq $8, %rsp\n    popq %r11\n    popq %r10\n    popq %r9\n    popq %r8\n"
        "    popq %rdi\n    popq %rsi\n    popq %rdx\n    popq %rcx\n    popq %rax\n"
        "    cmpl $0, ulp_agent_ending(%rip)\n"
        "    je ulp_agent_wait\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n"
        "    popq %r12\n    popq %rbp\n    popq %rbx\n"
        "    ret\n"
        ".size ulp_agent_idle, .-ulp_agent_idle\n"
        ".globl ulp_agent_resume\n"
        ".hidden ulp_agent_resume\n"
        ".type ulp_agent_resume, @function\n"
        "ulp_agent_resume:\n"
        "    movq ulp_agent_home(%rip), %rsp\n"
        /* the wait the trigger puts the agent back into reads its timeout
         * from ulp_agent_timeout: the next tick comes soon after it */
        "    movq $0, ulp_agent_timeout(%rip)\n"
        "    movq ulp_agent_wait_ns(%rip), %rcx\n"
        "    movq %rcx, ulp_agent_timeout+8(%rip)\n"
        "    movq ulp_agent_collect_seconds(%rip), %rcx\n"
        "    testq %rcx, %rcx\n"
        "    je ulp_agent_wait\n"
        "    movq %rcx, ulp_agent_collect_timeout(%rip)\n"
        "    movq $0, ulp_agent_collect_timeout+8(%rip)\n"
        "    leaq ulp_agent_collect_timeout(%rip), %rdx\n"
        "    jmp ulp_agent_ppoll\n"
        ".size ulp_agent_resume, .-ulp_agent_resume\n");

_Static_assert(SYS_ppoll == 271, "ulp_agent_idle uses ppoll");
_Static_assert(LONGEST_WAIT_NS < 1000000000L, "ulp_agent_timeout holds nanoseconds below 1 s");

/* Entered by the trigger with %rsp at the top of call_stack.  It never
 * returns: it answers, then goes back to the idle loop on the agent's own
 * stack, where the trigger finds it and restores it. */
ULP_HIDDEN __attribute__((noreturn, used)) void ulp_agent_dispatch(void)
{
    struct ulp_mailbox *box = &ulp_mailbox;
    __atomic_store_n(&box->state, ULP_AGENT_BUSY, __ATOMIC_RELEASE);
    uint32_t size = box->request_size <= ULP_REQUEST_MAX ? box->request_size : 0;
    const struct ulp_request *req = (const struct ulp_request *)box->request;
    int world_stopped = size >= sizeof *req && req->nthreads > 0 &&
                        (req->op == ULP_OP_COMMIT || req->op == ULP_OP_REVERT);
    box->status = ulp_handle_request(req, size, box->message, sizeof box->message);
    ulp_agent_collect_seconds = world_stopped ? COLLECT_WAIT_SECONDS : 0;
    box->staged_fd = ulp_staged_fd;
    wait_after_request();
    __atomic_store_n(&box->state, ULP_AGENT_IDLE, __ATOMIC_RELEASE);
    __atomic_add_fetch(&box->serial, 1, __ATOMIC_RELEASE);
    ulp_agent_resume();
}

/* A state letter of /proc/.../stat: zombie or dead? */
static int ended_state(char state)
{
    return state == 'Z' || state == 'X' || state == 'x';
}

/* The number in /proc/self/stat's field 20 (num_threads), -1 if unknown;
 * *MAIN_STATE: its field 3, the state of the main thread. */
static long thread_count(char *main_state)
{
    char buffer[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t got = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (got <= 0)
        return -1;
    buffer[got] = '\0';
    char *field = strrchr(buffer, ')');
    if (!field || !field[1] || !field[2])
        return -1;
    *main_state = field[2];
    for (int i = 0; field && i < 18; i++)
        field = strchr(field + 1, ' ');
    return field ? strtol(field + 1, NULL, 10) : -1;
}

/* Is the thread TID a zombie or dead?  (Unknown: no.) */
static int thread_ended(long tid)
{
    char path[64], buffer[512];
    snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 1;       /* gone meanwhile */
    ssize_t got = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (got <= 0)
        return 1;
    buffer[got] = '\0';
    char *state = strrchr(buffer, ')');
    return state && ended_state(state[2]);
}

/* Is every other thread of the process gone?  A main thread that called
 * pthread_exit stays a zombie (and is counted) until the last thread ends,
 * so with two threads counted, their states are looked at.  The agent is
 * never the main thread (pthread_create started it): of two, the other is
 * the main thread, whose state /proc/self/stat gives, and one that is not
 * a zombie settles it without a look at /proc/self/task (three system
 * calls a tick instead of eleven: 4,000 idle processes tick 4,000 times a
 * second).  No malloc (no opendir): the agent's idle check must not change
 * the process's memory map (a first malloc on a thread creates an arena). */
static int alone(void)
{
    char main_state = 'Z';
    long count = thread_count(&main_state);
    if (count == 1)
        return 1;
    if (count != 2 || !ended_state(main_state))
        return 0;
    int dir = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return 0;
    int others = 0;
    long self = syscall(SYS_gettid);
    char buffer[1024] __attribute__((aligned(8)));
    long got;
    while ((got = syscall(SYS_getdents64, dir, buffer, sizeof buffer)) > 0) {
        for (long at = 0; at < got;) {
            struct linux_dirent64 {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *entry = (void *)(buffer + at);
            long tid = strtol(entry->name, NULL, 10);
            if (tid > 0 && tid != self && !thread_ended(tid))
                others++;
            at += entry->reclen;
        }
    }
    close(dir);
    return others == 0;
}

/* Once idle (its wait at the longest), the agent runs at the lowest
 * priority there is: its ticks take only CPU nothing else wants (4,000 idle
 * agents at normal priority took most of a 2-core machine from a trigger
 * working on them).  While it finds work (a library just registered, lazy
 * PLT slots resolved, the wake of a request) it runs at normal priority, so
 * that a busy machine does not hold back the binding of a library's own
 * calls.  A policy that is neither of the two is a trigger's, which raised
 * the agent while it holds it and puts the old one back
 * (trigger/priority.py): left alone. */
static void follow_priority(int idle)
{
    static int at_idle_priority;
    struct sched_param none = {.sched_priority = 0};
    if (idle == at_idle_priority)
        return;
    int policy = sched_getscheduler(0);
    if (policy != SCHED_OTHER && policy != SCHED_IDLE)
        return;
    if (sched_setscheduler(0, idle ? SCHED_IDLE : SCHED_OTHER, &none) == 0)
        at_idle_priority = idle;
}

/* dl_iterate_phdr's counts of objects the loader added and removed: the
 * same as at the last look, no library was unloaded since. */
static int read_loader_counts(struct dl_phdr_info *info, size_t size, void *data)
{
    unsigned long long *counts = data;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs) {
        counts[0] = info->dlpi_adds;
        counts[1] = info->dlpi_subs;
    }
    return 1;
}

/* Unknown counts (an old loader) read as 0, 0: changed every time. */
static int loader_changed(void)
{
    static unsigned long long last[2] = {~0ULL, ~0ULL};
    unsigned long long now[2] = {0, 0};
    dl_iterate_phdr(read_loader_counts, now);
    int changed = now[0] != last[0] || now[1] != last[1] || (!now[0] && !now[1]);
    last[0] = now[0];
    last[1] = now[1];
    return changed;
}

/* Called by the idle loop after each wait: forget unloaded libraries, bind
 * registered libraries' calls to themselves past their trampolines
 * (rebind.c), and tell whether the agent should end. */
ULP_HIDDEN __attribute__((used)) int ulp_agent_tick(void)
{
    ulp_release_kept_pins();
    if (loader_changed())
        ulp_forget_unloaded();
    int transitions_open = ulp_transition_tick();
    next_wait(ulp_rebind_library_calls() > 0, transitions_open);
    follow_priority(ulp_agent_wait_ns == LONGEST_WAIT_NS);
    ulp_log_libraries();
    return alone();
}

static void *agent_main(void *unused)
{
    (void)unused;
    ulp_mailbox.agent_tid = (int32_t)syscall(SYS_gettid);
    __atomic_store_n(&ulp_mailbox.state, ULP_AGENT_IDLE, __ATOMIC_RELEASE);
    ulp_log_message(ULP_LOG_AGENT, 0, "agent started (thread %d)", ulp_mailbox.agent_tid);
    ulp_agent_idle();
    ulp_log_message(ULP_LOG_AGENT, 0, "agent ended: it was the last thread of the process");
    __atomic_store_n(&ulp_mailbox.state, ULP_AGENT_ENDED, __ATOMIC_RELEASE);
    return NULL;    /* the last thread: glibc calls exit(0) */
}

/* The agent blocks every signal (it inherits the mask), so signals meant
 * for the application never run their handlers on it. */
ULP_HIDDEN void ulp_start_agent(void)
{
    sigset_t all, saved;
    pthread_t thread;
    pthread_attr_t attr;

    ulp_mailbox.state = ULP_AGENT_STARTING;
    ulp_mailbox.agent_tid = 0;
    ulp_transition_unlock_for_new_agent();
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    if (pthread_create(&thread, &attr, agent_main, NULL) == 0)
        pthread_setname_np(thread, "ulp-agent");
    else
        ulp_mailbox.state = ULP_AGENT_OFF;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

/* ULP_AGENT=demand: the child has no agent either, until a trigger starts
 * one (demand.c). */
static void no_agent_in_child(void)
{
    ulp_mailbox.agent_tid = 0;
    ulp_mailbox.state = ULP_AGENT_DEMAND;
}

__attribute__((constructor)) static void ulp_runtime_init(void)
{
    ulp_mailbox.dispatch = (uint64_t)(uintptr_t)ulp_agent_dispatch;
    ulp_mailbox.call_stack_top = (uint64_t)(uintptr_t)(call_stack + sizeof call_stack);
    ulp_mailbox.universe_address = (uint64_t)(uintptr_t)&ulp_global_universe;
    ulp_mailbox.idle_address = (uint64_t)(uintptr_t)ulp_agent_wait_return;
    ulp_mailbox.staged_fd = -1;
    ulp_mailbox.features = ULP_FEATURE_INLINE_OBJECT | ULP_FEATURE_THREAD_BOUNDS;
    ulp_mailbox.applied_table = ulp_applied_table_address();
    measure_thread_layout();
    ulp_foreign_init();
    char why[400];
    enum ulp_agent_mode mode = ulp_agent_mode(why, sizeof why);
    static const char *const told[] = {
        [ULP_AGENT_MODE_START] = "starting",
        [ULP_AGENT_MODE_OFF] = "off: the process cannot be patched",
        [ULP_AGENT_MODE_DEMAND] = "on demand: started by the first trigger",
    };
    ulp_log_message(ULP_LOG_RUNTIME, 0, "runtime loaded (ABI %d), agent %s", ULP_ABI_VERSION,
                    told[mode]);
    if (mode != ULP_AGENT_MODE_START)    /* a message of its own: a path may be long */
        ulp_log_message(ULP_LOG_RUNTIME, 0, "agent %s by %s", ulp_agent_mode_name(mode), why);
    if (mode == ULP_AGENT_MODE_OFF)
        return;
    if (mode == ULP_AGENT_MODE_DEMAND) {
        ulp_mailbox.state = ULP_AGENT_DEMAND;
        pthread_atfork(NULL, NULL, no_agent_in_child);
        return;
    }
    ulp_start_agent();
    /* fork() keeps only the calling thread: the child gets an agent of its
     * own and can be patched independently */
    pthread_atfork(NULL, NULL, ulp_start_agent);
}
