/* A coroutine on a heap stack calls the library while an activation of the
 * library is live on the thread's stack (it switched to the coroutine from
 * a callback).  Commands on stdin:
 *   run  -> coro_run(): the coroutine prints "coroutine waiting", reads a
 *           line (the test patches meanwhile), calls coro_tag, switches back;
 *           then prints "run=<outer tags> coroutine=<its tag>"
 *   tag  -> "tag=<coro_tag()>" from main, an external entry
 *   park -> a coroutine on a stack of its own (mmap) calls coro_run, whose
 *           callback switches back to main: the coroutine is suspended
 *           inside the library, on no thread; prints "parked"
 *   park own -> the same with a stack made as a program with a stack
 *           switch of its own would: glibc's makecontext called directly
 *           (not the one the runtime puts first), the stack told to the
 *           runtime with ulp_note_stack
 *   park unnoted [heap|static] -> the same stack switch, the stack told to
 *           no one (mmap, from malloc's heap, or an array of the program's
 *           own): the runtime cannot know it is a stack
 *   park unnoted signal -> on such a stack the coroutine spins in
 *           coro_spin, the outermost frame of its activation, until a timer
 *           signal's handler switches back to main from inside the loop
 *   resume spin -> lets the spinning coroutine go on: coro_spin returns
 *           coro_tag(); prints "resumed spin=<tag>"
 *   resume [thread] -> the parked coroutine goes on (on this thread, or on
 *           a new one): coro_run returns; prints "resumed run=<tags>"
 *   unpark -> frees the parked coroutine's stack and clears its saved
 *           context; prints "unparked"
 *   spin thread -> a new thread runs a coroutine (makecontext, a stack of
 *           its own) that enters coro_spin_then_tag and spins there: an activation
 *           running on a coroutine stack with no return address into the
 *           library on it; prints "spinning" once it spins
 *   spin thread unnoted -> the same on a stack told to no one (glibc's
 *           own makecontext)
 *   switch away -> a signal's handler on the spinning thread switches back
 *           to the thread's own stack from inside the loop; there the
 *           thread calls coro_tag, then lets the loop go on and resumes it;
 *           the thread ends; prints "away tag=<its tag> spun=<the loop's>"
 *   let spin -> lets it go on: coro_spin_then_tag returns 10 + coro_tag();
 *           the thread ends; prints "spun=<that>"
 *   park spin -> "park", but the parked activation is coro_run_then_spin's
 *   resume spinning -> resumes it on a new thread, which spins in
 *           coro_run_then_spin after the callback returned; prints
 *           "resumed, spinning" once it spins
 *   finish -> lets it go on, joins the thread; prints "resumed run=<tags>"
 *   park heap -> "park" on a stack from malloc's heap
 *   busy on / busy off -> a thread runs a loop of the program's own, never
 *           asleep, until "busy off"; prints "busy" / "idle"
 *   old kernel -> from now on, in every thread, the two ioctls a kernel
 *           before 6.7 / 6.11 lacks (PAGEMAP_SCAN, PROCMAP_QUERY) fail with
 *           ENOTTY (a seccomp filter); prints "old kernel"
 * argv[1], if given: MiB of heap to fill (memory a commit searches). */
#include <dlfcn.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/time.h>
#include <sys/mman.h>
#include <ucontext.h>

int coro_tag(void);
int coro_run(void (*callback)(void));
int coro_spin(volatile int *spinning, volatile int *go);
int coro_spin_then_tag(volatile int *spinning, volatile int *go);
int coro_run_then_spin(void (*callback)(void), volatile int *spinning, volatile int *go);

#define STACK_SIZE (256 * 1024)

static ucontext_t main_context, coroutine_context;
static int coroutine_saw;

static void coroutine(void)
{
    char line[16];
    printf("coroutine waiting\n");
    if (!fgets(line, sizeof line, stdin))
        exit(1);
    coroutine_saw = coro_tag();
    swapcontext(&coroutine_context, &main_context);
}

typedef void (*make_context)(ucontext_t *, void (*)(void), int, ...);

/* CONTEXT runs FN on STACK when switched to, then LINK. */
static void make_coroutine(make_context make, ucontext_t *context, void *stack,
                           ucontext_t *link, void (*fn)(void))
{
    getcontext(context);
    context->uc_stack.ss_sp = stack;
    context->uc_stack.ss_size = STACK_SIZE;
    context->uc_link = link;
    make(context, fn, 0);
}

static void switch_to_coroutine(void)
{
    char *stack = malloc(STACK_SIZE);
    make_coroutine(makecontext, &coroutine_context, stack, &main_context, coroutine);
    swapcontext(&main_context, &coroutine_context);
    free(stack);
}

/* --- a coroutine parked inside the library ------------------------------- */

static ucontext_t parked_context, parker_context;
static void *parked_stack;
static int parked_run;

static void park_here(void)
{
    swapcontext(&parked_context, &parker_context);
}

static void parked_coroutine(void)
{
    parked_run = coro_run(park_here);
}

/* glibc's own makecontext (not the one the runtime puts first), and the
 * stack told to the runtime by hand if NOTE. */
static make_context own_stack_switch(void *stack, size_t size, int note)
{
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void (*note_stack)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT,
                                                                         "ulp_note_stack");
    if (note && note_stack)
        note_stack(stack, size);
    return libc ? (make_context)dlsym(libc, "makecontext") : makecontext;
}

/* --- as on a kernel without PAGEMAP_SCAN and PROCMAP_QUERY ------------------ */

static int pretend_old_kernel(void)
{
    enum { REQUEST = offsetof(struct seccomp_data, args[1]) };
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ioctl, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, REQUEST),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xc0606610, 1, 0),     /* PAGEMAP_SCAN */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xc0686611, 0, 1),     /* PROCMAP_QUERY */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOTTY),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof code / sizeof code[0], code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    /* TSYNC: the ulp agent, started by the runtime's constructor, too */
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                        &program);
}

/* --- a coroutine parked by a signal handler, inside coro_spin's loop ------- */

static volatile int spinning, spin_go, spin_tag;

static void spinning_coroutine(void)
{
    spin_tag = coro_spin(&spinning, &spin_go);
}

static void arm_timer(void)
{
    struct itimerval once = {.it_value = {.tv_usec = 2000}};
    setitimer(ITIMER_REAL, &once, NULL);
}

static void park_from_handler(int signal_number)
{
    (void)signal_number;
    if (!spinning) {
        arm_timer();        /* not in the loop yet: later */
        return;
    }
    swapcontext(&parked_context, &parker_context);
}

static volatile int thread_spinning, thread_spin_go, thread_spin_tag;

static void parked_spinning_coroutine(void)
{
    parked_run = coro_run_then_spin(park_here, &thread_spinning, &thread_spin_go);
}

static int parked_on_heap, parked_static;
static char static_stack[STACK_SIZE] __attribute__((aligned(16)));

static void park(const char *how)
{
    make_context make = makecontext;
    parked_on_heap = strcmp(how, "park unnoted heap") == 0 || strcmp(how, "park heap") == 0;
    parked_static = strcmp(how, "park unnoted static") == 0;
    if (parked_static) {
        parked_stack = static_stack;
    } else if (parked_on_heap) {
        mallopt(M_MMAP_THRESHOLD, 4 * STACK_SIZE);     /* from the heap, not a mapping */
        parked_stack = malloc(STACK_SIZE);
    } else {
        parked_stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (strcmp(how, "park") != 0 && strcmp(how, "park spin") != 0 &&
        strcmp(how, "park heap") != 0)
        make = own_stack_switch(parked_stack, STACK_SIZE, strcmp(how, "park own") == 0);
    int by_signal = strcmp(how, "park unnoted signal") == 0;
    if (by_signal) {
        struct sigaction action = {.sa_handler = park_from_handler};
        sigaction(SIGALRM, &action, NULL);
        arm_timer();
    }
    make_coroutine(make, &parked_context, parked_stack, &parker_context,
                   by_signal ? spinning_coroutine
                   : strcmp(how, "park spin") == 0 ? parked_spinning_coroutine
                   : parked_coroutine);
    swapcontext(&parker_context, &parked_context);
    printf("parked\n");
}

/* --- a coroutine running on a thread, spinning inside the library ----------- */

static ucontext_t spinner_context, spinner_home;
static pthread_t spinner;

static void spin_on_coroutine(void)
{
    thread_spin_tag = coro_spin_then_tag(&thread_spinning, &thread_spin_go);
}

static ucontext_t spinner_handler;
static volatile int switched_away, away_tag;

/* SIGUSR1 on the spinning thread: switch from inside the loop back to the
 * thread's own stack (spin_thread below), as a scheduler's handler would. */
static void switch_away(int signal_number)
{
    (void)signal_number;
    switched_away = 1;
    swapcontext(&spinner_handler, &spinner_home);
}

/* UNNOTED (non-NULL): the coroutine's stack is made with glibc's own
 * makecontext and told to no one. */
static void *spin_thread(void *unnoted)
{
    void *stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
    make_context make = unnoted ? own_stack_switch(stack, STACK_SIZE, 0) : makecontext;
    make_coroutine(make, &spinner_context, stack, &spinner_home, spin_on_coroutine);
    swapcontext(&spinner_home, &spinner_context);
    if (switched_away) {        /* the handler switched back here */
        switched_away = 0;
        away_tag = coro_tag();  /* an entry from the thread's own stack */
        thread_spin_go = 1;
        swapcontext(&spinner_home, &spinner_handler);   /* the handler returns into the loop */
    }
    munmap(stack, STACK_SIZE);
    return NULL;
}

static void wait_for(volatile int *flag)
{
    while (!*flag)
        sched_yield();
}

/* --- a thread running code of the program's, never asleep ------------------ */

static volatile int busy;
static pthread_t busy_thread;

static void *keep_busy(void *unused)
{
    (void)unused;
    while (busy)
        ;
    return NULL;
}

/* Resume the parked coroutine from the calling thread until it returns. */
static void *resume(void *unused)
{
    (void)unused;
    swapcontext(&parker_context, &parked_context);
    return NULL;
}

static void resume_on_another_thread(void)
{
    pthread_t thread;
    if (pthread_create(&thread, NULL, resume, NULL) == 0)
        pthread_join(thread, NULL);
}

int main(int argc, char **argv)
{
    char line[32];
    /* argv[1]: MiB of heap to fill, memory a commit has to search */
    size_t fill = argc > 1 ? strtoul(argv[1], NULL, 10) << 20 : 0;
    char *filled = fill ? malloc(fill) : NULL;
    if (filled)
        memset(filled, 0x5a, fill);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "run", 3) == 0) {
            int outer = coro_run(switch_to_coroutine);
            printf("run=%d coroutine=%d\n", outer, coroutine_saw);
        } else if (strncmp(line, "tag", 3) == 0) {
            printf("tag=%d\n", coro_tag());
        } else if (strncmp(line, "park", 4) == 0) {
            line[strcspn(line, "\n")] = 0;
            park(line);
        } else if (strncmp(line, "old kernel", 10) == 0) {
            printf(pretend_old_kernel() == 0 ? "old kernel\n" : "seccomp failed\n");
        } else if (strncmp(line, "busy on", 7) == 0) {
            busy = 1;
            pthread_create(&busy_thread, NULL, keep_busy, NULL);
            printf("busy\n");
        } else if (strncmp(line, "busy off", 8) == 0) {
            busy = 0;
            pthread_join(busy_thread, NULL);
            printf("idle\n");
        } else if (strncmp(line, "switch away", 11) == 0) {
            pthread_kill(spinner, SIGUSR1);
            pthread_join(spinner, NULL);
            printf("away tag=%d spun=%d\n", away_tag, thread_spin_tag);
        } else if (strncmp(line, "spin thread", 11) == 0) {
            struct sigaction action = {.sa_handler = switch_away};
            sigaction(SIGUSR1, &action, NULL);
            thread_spinning = thread_spin_go = 0;
            pthread_create(&spinner, NULL, spin_thread,
                           strstr(line, "unnoted") ? (void *)1 : NULL);
            wait_for(&thread_spinning);
            printf("spinning\n");
        } else if (strncmp(line, "let spin", 8) == 0) {
            thread_spin_go = 1;
            pthread_join(spinner, NULL);
            printf("spun=%d\n", thread_spin_tag);
        } else if (strncmp(line, "resume spinning", 15) == 0) {
            thread_spinning = thread_spin_go = 0;
            pthread_create(&spinner, NULL, resume, NULL);
            wait_for(&thread_spinning);
            printf("resumed, spinning\n");
        } else if (strncmp(line, "finish", 6) == 0) {
            thread_spin_go = 1;
            pthread_join(spinner, NULL);
            printf("resumed run=%d\n", parked_run);
        } else if (strncmp(line, "resume spin", 11) == 0) {
            spin_go = 1;
            resume(NULL);
            printf("resumed spin=%d\n", spin_tag);
        } else if (strncmp(line, "resume thread", 13) == 0) {
            resume_on_another_thread();
            printf("resumed run=%d\n", parked_run);
        } else if (strncmp(line, "resume", 6) == 0) {
            resume(NULL);
            printf("resumed run=%d\n", parked_run);
        } else if (strncmp(line, "unpark", 6) == 0) {
            if (parked_static) {
                explicit_bzero(parked_stack, STACK_SIZE);
            } else if (parked_on_heap) {
                explicit_bzero(parked_stack, STACK_SIZE);   /* as a reuse would */
                free(parked_stack);
            } else {
                munmap(parked_stack, STACK_SIZE);
            }
            memset(&parked_context, 0, sizeof parked_context);  /* a coroutine object freed */
            printf("unparked\n");
        }
    }
    return 0;
}
