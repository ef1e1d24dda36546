/* Coroutines made with boost.context (libboost_context.so: make_fcontext,
 * jump_fcontext, as Boost.Coroutine2, Boost.Fiber and folly's fibers make
 * them) that enter the library and switch away from inside it.  Commands
 * on stdin:
 *   park -> a coroutine on a stack of its own (mmap) calls coro_run, whose
 *           callback switches back: the coroutine waits inside the library,
 *           on no thread; prints "parked"
 *   resume [thread] -> the parked coroutine goes on (on this thread, or on
 *           a new one) until coro_run returns; prints "resumed run=<tags>"
 *   hold -> main enters coro_run, whose callback prints "holding" and reads
 *           lines: "park" parks a coroutine as above, from inside main's
 *           activation (prints "parked"); "park thread" parks one from a
 *           new thread; "resume" resumes the parked one from inside main's
 *           activation (prints "resumed run=<tags>"); "release" returns,
 *           and main prints "held run=<tags>"
 *   tag  -> "tag=<coro_tag()>" from main, an external entry
 *   unpark -> unmaps the parked coroutine's stack; prints "unparked" */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int coro_tag(void);
int coro_run(void (*callback)(void));

/* boost/context/detail/fcontext.hpp, extern "C" */
typedef void *fcontext_t;
typedef struct {
    fcontext_t fctx;
    void *data;
} transfer_t;
transfer_t jump_fcontext(fcontext_t const to, void *vp);
fcontext_t make_fcontext(void *sp, size_t size, void (*fn)(transfer_t));

#define STACK_SIZE (256 * 1024)

static fcontext_t parked, parker;
static void *parked_stack;
static int parked_run;

static void park_here(void)
{
    parker = jump_fcontext(parker, NULL).fctx;
}

static void parked_coroutine(transfer_t from)
{
    parker = from.fctx;
    parked_run = coro_run(park_here);
    jump_fcontext(parker, NULL);
    abort();    /* never resumed again */
}

static void *resume(void *unused)
{
    (void)unused;
    jump_fcontext(parked, NULL);
    return NULL;
}

static void park(void)
{
    parked_stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
    parked = make_fcontext((char *)parked_stack + STACK_SIZE, STACK_SIZE, parked_coroutine);
    parked = jump_fcontext(parked, NULL).fctx;
    printf("parked\n");
}

static void *park_on_thread(void *unused)
{
    (void)unused;
    park();
    return NULL;
}

static void hold(void)
{
    char line[32];
    printf("holding\n");
    while (fgets(line, sizeof line, stdin) && strncmp(line, "release", 7) != 0) {
        if (strncmp(line, "park thread", 11) == 0) {
            pthread_t thread;
            if (pthread_create(&thread, NULL, park_on_thread, NULL) == 0)
                pthread_join(thread, NULL);
        } else if (strncmp(line, "park", 4) == 0) {
            park();
        } else if (strncmp(line, "resume", 6) == 0) {
            resume(NULL);
            printf("resumed run=%d\n", parked_run);
        }
    }
}

int main(void)
{
    char line[32];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "park", 4) == 0) {
            park();
        } else if (strncmp(line, "hold", 4) == 0) {
            int run = coro_run(hold);
            printf("held run=%d\n", run);
        } else if (strncmp(line, "resume thread", 13) == 0) {
            pthread_t thread;
            if (pthread_create(&thread, NULL, resume, NULL) == 0)
                pthread_join(thread, NULL);
            printf("resumed run=%d\n", parked_run);
        } else if (strncmp(line, "resume", 6) == 0) {
            resume(NULL);
            printf("resumed run=%d\n", parked_run);
        } else if (strncmp(line, "tag", 3) == 0) {
            printf("tag=%d\n", coro_tag());
        } else if (strncmp(line, "unpark", 6) == 0) {
            munmap(parked_stack, STACK_SIZE);
            printf("unparked\n");
        }
    }
    return 0;
}
