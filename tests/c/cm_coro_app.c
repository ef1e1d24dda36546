/* A coroutine on a heap stack calls the library while an activation of the
 * library is live on the thread's stack (it switched to the coroutine from
 * a callback).  Commands on stdin:
 *   run  -> coro_run(): the coroutine prints "coroutine waiting", reads a
 *           line (the test patches meanwhile), calls coro_tag, switches back;
 *           then prints "run=<outer tags> coroutine=<its tag>"
 *   tag  -> "tag=<coro_tag()>" from main, an external entry */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

int coro_tag(void);
int coro_run(void (*callback)(void));

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

static void switch_to_coroutine(void)
{
    char *stack = malloc(STACK_SIZE);
    getcontext(&coroutine_context);
    coroutine_context.uc_stack.ss_sp = stack;
    coroutine_context.uc_stack.ss_size = STACK_SIZE;
    coroutine_context.uc_link = &main_context;
    makecontext(&coroutine_context, coroutine, 0);
    swapcontext(&main_context, &coroutine_context);
    free(stack);
}

int main(void)
{
    char line[16];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "run", 3) == 0) {
            int outer = coro_run(switch_to_coroutine);
            printf("run=%d coroutine=%d\n", outer, coroutine_saw);
        } else if (strncmp(line, "tag", 3) == 0) {
            printf("tag=%d\n", coro_tag());
        }
    }
    return 0;
}
