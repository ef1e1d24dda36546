/* Coroutines that move between threads while suspended inside the library
 * (tests/test_consistency_stress.py).
 *
 * COROUTINES coroutines, each on a stack of its own made with makecontext,
 * run coro_run(yield) again and again: coro_run calls coro_tag, then the
 * callback, which suspends the coroutine (back to the worker that ran it),
 * then coro_tag again.  WORKERS threads take runnable coroutines from one
 * queue, so a coroutine suspended inside the library on one thread is
 * usually resumed by another.  A 1 kHz timer signal interrupts whichever
 * thread runs, often a coroutine inside the library, and its handler runs
 * an activation of its own.  Every activation checks that both of its
 * coro_tag calls saw the same version.
 *
 * Prints "ready"; then "stats" answers
 * "activations=N mixed=M moved=K handlers=H seen=a,b" (moved: resumptions on another
 * thread than the one the coroutine last ran on; seen: activations that saw
 * version 1, version 2). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>

int coro_run(void (*callback)(void));

#define COROUTINES 16
#define WORKERS 2
#define STACK_SIZE (64 * 1024)

struct coroutine {
    ucontext_t context;
    ucontext_t *back;           /* the context of the worker running it */
    int last_worker;
};

static struct coroutine coroutines[COROUTINES];
static __thread struct coroutine *running;

static struct {
    pthread_mutex_t lock;
    int queue[COROUTINES];
    int head, count;
} runnable = {.lock = PTHREAD_MUTEX_INITIALIZER};

static long activations, mixed, moved, seen[3];
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;

/* The handler's own counts: no lock in a signal handler. */
static long handler_runs, handler_mixed;

static void nothing(void)
{
}

static void on_timer(int signal)
{
    (void)signal;
    int tags = coro_run(nothing);
    __atomic_add_fetch(&handler_runs, 1, __ATOMIC_RELAXED);
    if (tags / 10 != tags % 10)
        __atomic_add_fetch(&handler_mixed, 1, __ATOMIC_RELAXED);
}

static void suspend(void)
{
    struct coroutine *self = running;
    swapcontext(&self->context, self->back);
}

static void coroutine_main(void)
{
    for (;;) {
        int tags = coro_run(suspend);
        int before = tags / 10, after = tags % 10;
        pthread_mutex_lock(&stats_lock);
        activations++;
        mixed += before != after;
        if (before >= 1 && before <= 2 && before == after)
            seen[before]++;
        pthread_mutex_unlock(&stats_lock);
    }
}

static int take(void)
{
    int index = -1;
    pthread_mutex_lock(&runnable.lock);
    if (runnable.count > 0) {
        index = runnable.queue[runnable.head];
        runnable.head = (runnable.head + 1) % COROUTINES;
        runnable.count--;
    }
    pthread_mutex_unlock(&runnable.lock);
    return index;
}

static void give_back(int index)
{
    pthread_mutex_lock(&runnable.lock);
    runnable.queue[(runnable.head + runnable.count) % COROUTINES] = index;
    runnable.count++;
    pthread_mutex_unlock(&runnable.lock);
}

static void *worker(void *number)
{
    int me = (int)(long)number;
    ucontext_t home;
    for (;;) {
        int index = take();
        if (index < 0) {
            sched_yield();
            continue;
        }
        struct coroutine *c = &coroutines[index];
        if (c->last_worker != me && c->last_worker >= 0) {
            pthread_mutex_lock(&stats_lock);
            moved++;
            pthread_mutex_unlock(&stats_lock);
        }
        c->last_worker = me;
        c->back = &home;
        running = c;
        swapcontext(&home, &c->context);
        give_back(index);
    }
    return NULL;
}

int main(void)
{
    char line[64];
    pthread_t threads[WORKERS];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < COROUTINES; i++) {
        struct coroutine *c = &coroutines[i];
        void *stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (stack == MAP_FAILED)
            return 1;
        getcontext(&c->context);
        c->context.uc_stack.ss_sp = stack;
        c->context.uc_stack.ss_size = STACK_SIZE;
        c->context.uc_link = NULL;      /* coroutine_main never returns */
        c->last_worker = -1;
        makecontext(&c->context, coroutine_main, 0);
        give_back(i);
    }
    for (long w = 0; w < WORKERS; w++)
        if (pthread_create(&threads[w], NULL, worker, (void *)w) != 0)
            return 1;
    struct sigaction action = {.sa_handler = on_timer, .sa_flags = SA_RESTART};
    struct itimerval every_ms = {{0, 1000}, {0, 1000}};
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGALRM, &action, NULL) != 0 || setitimer(ITIMER_REAL, &every_ms, NULL) != 0)
        return 1;
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "stats", 5) == 0) {
            pthread_mutex_lock(&stats_lock);
            printf("activations=%ld mixed=%ld moved=%ld handlers=%ld seen=%ld,%ld\n",
                   activations, mixed + __atomic_load_n(&handler_mixed, __ATOMIC_RELAXED), moved,
                   __atomic_load_n(&handler_runs, __ATOMIC_RELAXED), seen[1], seen[2]);
            pthread_mutex_unlock(&stats_lock);
        }
    }
    return 0;
}
