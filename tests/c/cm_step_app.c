/* The single-stepping test of the tracker (issue 7, item 8a).
 *
 * A worker thread runs rounds; each round enters the library from two call
 * sites and then runs one activation, lib_act, that enters the library
 * every other way.  A tracer
 * (a child process, so it shares every address) stops the worker at
 * instruction boundary k of round k, makes the global universe move there
 * as a commit does (the main thread runs the runtime's own transition code,
 * ulp_test_transition, with the worker's registers, while the tracer holds
 * it stopped; the versions' intervals are already stamped, by a real apply
 * and revert before), and delivers SIGUSR1 there: the handler runs a
 * whole activation of its own.  When the handler is done the universe moves
 * once more, and again when the round's activation calls back into the
 * program, so that an entry of the round's activation misjudged external
 * would see another version.  Then every activation is checked: the
 * round's saw one version, the handler's saw one, and a handler that
 * interrupted the round's activation (the tracer tells) saw that one.
 *
 * With "jump", the handler leaves with siglongjmp to the top of the round
 * instead of returning, abandoning whatever it interrupted (an update of
 * the tracker's record included); the next round then runs without a
 * signal and is checked.
 *
 * stdin: "go BEFORE AFTER LATER LAST [jump]" runs one phase; it prints one
 * line of counts. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ulp_abi.h"

typedef void (*step_callback)(int *tags, int *n);
int lib_tag(void);
int lib_act(step_callback callback, int *tags, int *n);
void *lib_act_entry(void);

/* Breakpoints the tracer stops at: each is an int3 at the function's address. */
void marker_round_start(void);
void marker_round_end(void);
void marker_handler_done(void);
void marker_commit(void);
__asm__(".text\n"
        ".globl marker_round_start\n marker_round_start: int3\n ret\n"
        ".globl marker_round_end\n marker_round_end: int3\n ret\n"
        ".globl marker_handler_done\n marker_handler_done: int3\n ret\n"
        ".globl marker_commit\n marker_commit: int3\n ret\n");

#define MAX_TAGS 16

/* Written by the tracer. */
static volatile int stop_rounds;
static volatile int interrupted_inside;
static volatile int traced;
static volatile int round_n;
static int jump_out;
static sigjmp_buf round_top;
static uint64_t last_universe;
/* Written by the handler. */
static int handler_tags[MAX_TAGS], handler_n;
static volatile int handler_ran;

struct counts {
    long rounds, handlers, inside, mixed_round, mixed_handler, mixed_across;
    long round_seen[4], handler_seen[4];
};
static struct counts counts;
static pid_t worker_tid;
static uintptr_t worker_stack_low, worker_stack_high;
static void (*test_transition)(const struct ulp_request_thread *, uint32_t, uint64_t);
/* tracer -> main thread: "move the universe with the worker stopped here" */
struct move {
    uint64_t universe;      /* 0: the tracer is done, the counts follow */
    uint64_t rip, rsp, thread_pointer;
};
static int move_pipe[2], moved_pipe[2];

static void move_universe(uint64_t universe, uint64_t rip, uint64_t rsp,
                          uint64_t thread_pointer)
{
    struct ulp_request_thread thread = {
        .tid = worker_tid, .rip = rip, .rsp = rsp, .thread_pointer = thread_pointer,
        .stack_low = worker_stack_low, .stack_high = worker_stack_high,
        .here_high = worker_stack_high};
    test_transition(&thread, 1, universe);
}

static void callback(int *tags, int *n)
{
    tags[(*n)++] = lib_tag();
}

/* The round's callback: a commit happens while its activation runs (the
 * tracer makes it at the marker, with this thread stopped there). */
static void round_callback(int *tags, int *n)
{
    marker_commit();
    tags[(*n)++] = lib_tag();
}

static void on_usr1(int sig)
{
    (void)sig;
    handler_n = 0;
    lib_act(callback, handler_tags, &handler_n);
    handler_ran = 1;
    marker_handler_done();
    if (jump_out)
        siglongjmp(round_top, 1);
}

static int one_version(const int *tags, int n)
{
    for (int i = 1; i < n; i++)
        if (tags[i] != tags[0])
            return 0;
    return 1;
}

static void check_round(const int *tags, int n)
{
    counts.rounds++;
    counts.mixed_round += !one_version(tags, n);
    counts.round_seen[tags[0] & 3]++;
    if (!handler_ran)
        return;
    handler_ran = 0;
    counts.handlers++;
    counts.mixed_handler += !one_version(handler_tags, handler_n);
    counts.handler_seen[handler_tags[0] & 3]++;
    if (interrupted_inside) {
        counts.inside++;
        counts.mixed_across += handler_tags[0] != tags[0];
    }
}

/* An external entry from another slot than the round's. */
__attribute__((noipa)) static int deeper(void)
{
    return lib_tag();
}

static void *worker(void *unused)
{
    (void)unused;
    __atomic_store_n(&worker_tid, gettid(), __ATOMIC_RELEASE);
    while (!traced)
        sched_yield();
    for (;;) {
        if (sigsetjmp(round_top, 1))
            handler_ran = 0;    /* that round was abandoned: check the next one */
        marker_round_start();
        if (stop_rounds)
            return NULL;
        int tags[MAX_TAGS];
        round_n = 0;
        int first = lib_tag();
        int second = deeper();
        lib_act(round_callback, tags, (int *)&round_n);
        marker_round_end();
        check_round(tags, round_n);
        (void)first;
        (void)second;
    }
}

/* --- the tracer (a child process) --------------------------------------- */

static void fail(const char *what)
{
    fprintf(stderr, "tracer: %s: %s\n", what, strerror(errno));
    _exit(2);
}

static int wait_stop(pid_t tid)
{
    int status;
    if (waitpid(tid, &status, __WALL) != tid || !WIFSTOPPED(status))
        fail("waitpid");
    return status;
}

/* Move the universe with the stopped worker TID where it is. */
static void commit_at(pid_t tid, uint64_t universe)
{
    struct user_regs_struct regs;
    char ack;
    if (ptrace(PTRACE_GETREGS, tid, 0, &regs) != 0)
        fail("getregs");
    struct move move = {universe, regs.rip, regs.rsp, regs.fs_base};
    if (write(move_pipe[1], &move, sizeof move) != sizeof move ||
        read(moved_pipe[0], &ack, 1) != 1)
        fail("move");
}

static void poke(pid_t tid, void *address, uint64_t value)
{
    if (ptrace(PTRACE_POKEDATA, tid, address, (void *)value) != 0)
        fail("poke");
}

static struct user_regs_struct registers(pid_t tid)
{
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, tid, 0, &regs) != 0)
        fail("getregs");
    return regs;
}

static uint64_t callback_universe;     /* the tracer's copy of last_universe */

/* A stop of TID at marker_commit: the round's callback wants a commit. */
static void commit_if_asked(pid_t tid, const struct user_regs_struct *regs)
{
    if (regs->rip - 1 == (uintptr_t)marker_commit)
        commit_at(tid, callback_universe);
}

/* Let the thread run to the int3 at MARKER (skipping other stops, making
 * the commits the round's callback asks for). */
static void run_to(pid_t tid, void (*marker)(void))
{
    for (;;) {
        if (ptrace(PTRACE_CONT, tid, 0, 0) != 0)
            fail("cont");
        wait_stop(tid);
        struct user_regs_struct regs = registers(tid);
        if (regs.rip - 1 == (uintptr_t)marker)
            return;
        commit_if_asked(tid, &regs);
    }
}

static void in_object(uintptr_t rip, uintptr_t base, long *count)
{
    Dl_info info;
    if (dladdr((void *)rip, &info) && (uintptr_t)info.dli_fbase == base)
        (*count)++;
}

static long peek(pid_t tid, const volatile void *address)
{
    errno = 0;
    long value = ptrace(PTRACE_PEEKDATA, tid, (void *)address, 0);
    if (errno)
        fail("peek");
    return value;
}

/* Inside the round's activation: it was entered (its trampoline, where the
 * stack pointer is the slot of its return address, was reached and it
 * recorded a version) and has not returned. */
static void trace(pid_t tid, const uint64_t universes[4])
{
    uintptr_t trampoline = (uintptr_t)dlsym(RTLD_DEFAULT, "lib_act");
    Dl_info runtime, library;
    if (!dladdr(dlsym(RTLD_DEFAULT, "ulp_entry"), &runtime) ||
        !dladdr((void *)trampoline, &library))
        fail("dladdr");
    long boundaries = 0, in_runtime = 0, in_library = 0;

    callback_universe = universes[3];
    if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0 || ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0)
        fail("seize");
    wait_stop(tid);
    poke(tid, (void *)&traced, 1);
    for (long k = 0;; k++) {
        run_to(tid, marker_round_start);
        commit_at(tid, universes[0]);
        uintptr_t slot = 0;
        struct user_regs_struct regs = registers(tid);
        for (long j = 0; j < k && regs.rip != (uintptr_t)marker_round_end; j++) {
            if (regs.rip == trampoline)
                slot = regs.rsp;
            if (ptrace(PTRACE_SINGLESTEP, tid, 0, 0) != 0)
                fail("singlestep");
            wait_stop(tid);
            regs = registers(tid);
            commit_if_asked(tid, &regs);
        }
        if (regs.rip == (uintptr_t)marker_round_end) {
            run_to(tid, marker_round_end);
            run_to(tid, marker_round_start);
            poke(tid, (void *)&stop_rounds, 1);
            break;
        }
        boundaries++;
        in_object(regs.rip, (uintptr_t)runtime.dli_fbase, &in_runtime);
        in_object(regs.rip, (uintptr_t)library.dli_fbase, &in_library);
        poke(tid, (void *)&interrupted_inside,
             slot != 0 && regs.rsp <= slot && (int)peek(tid, &round_n) > 0);
        commit_at(tid, universes[1]);
        if (ptrace(PTRACE_CONT, tid, 0, (void *)(long)SIGUSR1) != 0)
            fail("cont with SIGUSR1");
        wait_stop(tid);
        if (registers(tid).rip - 1 != (uintptr_t)marker_handler_done)
            fail("the handler did not finish");
        commit_at(tid, universes[2]);
        if (jump_out)
            run_to(tid, marker_round_start);
        run_to(tid, marker_round_end);
    }
    if (ptrace(PTRACE_DETACH, tid, 0, 0) != 0)
        fail("detach");
    struct move done = {0, 0, 0, 0};
    if (write(move_pipe[1], &done, sizeof done) != sizeof done ||
        write(move_pipe[1], (long[3]){boundaries, in_runtime, in_library}, 3 * sizeof(long)) < 0)
        fail("report");
    _exit(0);
}

/* The main thread's part: run the transitions the tracer asks for. */
static ssize_t serve_moves(long found[3])
{
    struct move move;
    while (read(move_pipe[0], &move, sizeof move) == sizeof move && move.universe) {
        move_universe(move.universe, move.rip, move.rsp, move.thread_pointer);
        if (write(moved_pipe[1], "m", 1) != 1)
            return -1;
    }
    return read(move_pipe[0], found, 3 * sizeof(long));
}

static void run_phase(const uint64_t universes[4])
{
    pthread_t thread;
    pthread_attr_t attr;
    void *stack;
    size_t stack_size;
    long found[3] = {0, 0, 0};
    memset(&counts, 0, sizeof counts);
    last_universe = universes[3];
    stop_rounds = 0;
    traced = 0;
    worker_tid = 0;
    if (pipe(move_pipe) != 0 || pipe(moved_pipe) != 0 ||
        pthread_create(&thread, NULL, worker, NULL) != 0)
        fail("start");
    if (pthread_getattr_np(thread, &attr) != 0 ||
        pthread_attr_getstack(&attr, &stack, &stack_size) != 0)
        fail("stack");
    pthread_attr_destroy(&attr);
    worker_stack_low = (uintptr_t)stack;
    worker_stack_high = (uintptr_t)stack + stack_size;
    while (!__atomic_load_n(&worker_tid, __ATOMIC_ACQUIRE))
        sched_yield();
    pid_t tracer = fork();
    if (tracer == 0)
        trace(worker_tid, universes);
    int status;
    ssize_t got = serve_moves(found);
    waitpid(tracer, &status, 0);
    pthread_join(thread, NULL);
    for (int i = 0; i < 2; i++) {
        close(move_pipe[i]);
        close(moved_pipe[i]);
    }
    printf("boundaries=%ld runtime=%ld library=%ld tracer=%d rounds=%ld handlers=%ld inside=%ld "
           "mixed_round=%ld mixed_handler=%ld mixed_across=%ld round_seen=%ld,%ld,%ld "
           "handler_seen=%ld,%ld,%ld\n",
           found[0], found[1], found[2], got == sizeof found && WIFEXITED(status) &&
           WEXITSTATUS(status) == 0, counts.rounds, counts.handlers, counts.inside,
           counts.mixed_round, counts.mixed_handler, counts.mixed_across, counts.round_seen[1],
           counts.round_seen[2], counts.round_seen[3], counts.handler_seen[1],
           counts.handler_seen[2], counts.handler_seen[3]);
}

int main(void)
{
    char line[64];
    unsigned long universes[4];
    setvbuf(stdout, NULL, _IOLBF, 0);
    prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY);
    uint64_t (*universe_value)(void) = dlsym(RTLD_DEFAULT, "ulp_global_universe_value");
    uint64_t *(*universe_address)(void) = dlsym(RTLD_DEFAULT, "ulp_global_universe_address");
    test_transition = dlsym(RTLD_DEFAULT, "ulp_test_transition");
    if (!universe_value || !universe_address || !test_transition) {
        printf("no runtime\n");
        return 1;
    }
    (void)universe_address;
    struct sigaction action = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &action, NULL);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "go %lu %lu %lu %lu", &universes[0], &universes[1], &universes[2],
                   &universes[3]) == 4) {
            uint64_t saved = universe_value();
            jump_out = strstr(line, "jump") != NULL;
            run_phase((uint64_t[4]){universes[0], universes[1], universes[2], universes[3]});
            test_transition(NULL, 0, saved);
        } else {
            printf("unknown command\n");
        }
    }
    return 0;
}
