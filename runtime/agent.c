/* The agent: a thread of the runtime that waits in a known state, holding no
 * lock, for the trigger to make it call ulp_agent_dispatch.  Loading a patch
 * (open, dlopen, malloc) therefore runs on a thread that may take locks, while
 * application threads keep running. */
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ulp_internal.h"

ULP_EXPORT struct ulp_mailbox ulp_mailbox = {
    .magic = ULP_MAILBOX_MAGIC,
    .abi_version = ULP_ABI_VERSION,
};

/* The trigger runs each call on this stack, not on the agent's own, so the
 * agent's frames survive even a trigger that dies in the middle. */
static char call_stack[256 * 1024] __attribute__((aligned(64)));

/* Wait forever without touching the stack: the trigger interrupts the
 * agent here, and restores it here afterwards. */
__asm__(".text\n"
        ".globl ulp_agent_idle\n"
        ".hidden ulp_agent_idle\n"
        ".type ulp_agent_idle, @function\n"
        "ulp_agent_idle:\n"
        "1:  movl $" "34" ", %eax\n"      /* SYS_pause */
        "    syscall\n"
        "    jmp 1b\n"
        ".size ulp_agent_idle, .-ulp_agent_idle\n");

_Static_assert(SYS_pause == 34, "ulp_agent_idle uses pause");

/* Entered by the trigger with %rsp at the top of call_stack.  It never
 * returns: it answers, then idles until the trigger restores the agent. */
ULP_HIDDEN __attribute__((noreturn, used)) void ulp_agent_dispatch(void)
{
    struct ulp_mailbox *box = &ulp_mailbox;
    __atomic_store_n(&box->state, ULP_AGENT_BUSY, __ATOMIC_RELEASE);
    uint32_t size = box->request_size <= ULP_REQUEST_MAX ? box->request_size : 0;
    box->status = ulp_handle_request((const struct ulp_request *)box->request, size,
                                     box->message, sizeof box->message);
    box->staged_fd = ulp_staged_fd;
    __atomic_store_n(&box->state, ULP_AGENT_IDLE, __ATOMIC_RELEASE);
    __atomic_add_fetch(&box->serial, 1, __ATOMIC_RELEASE);
    ulp_agent_idle();
}

static void *agent_main(void *unused)
{
    (void)unused;
    ulp_mailbox.agent_tid = (int32_t)syscall(SYS_gettid);
    __atomic_store_n(&ulp_mailbox.state, ULP_AGENT_IDLE, __ATOMIC_RELEASE);
    ulp_agent_idle();
}

/* The agent blocks every signal (it inherits the mask), so signals meant
 * for the application never run their handlers on it. */
static void start_agent(void)
{
    sigset_t all, saved;
    pthread_t thread;
    pthread_attr_t attr;

    ulp_mailbox.state = ULP_AGENT_STARTING;
    ulp_mailbox.agent_tid = 0;
    ulp_mailbox.staged_fd = -1;
    ulp_mailbox.dispatch = (uint64_t)(uintptr_t)ulp_agent_dispatch;
    ulp_mailbox.call_stack_top = (uint64_t)(uintptr_t)(call_stack + sizeof call_stack);
    ulp_mailbox.universe_address = (uint64_t)(uintptr_t)&ulp_global_universe;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    if (pthread_create(&thread, &attr, agent_main, NULL) == 0)
        pthread_setname_np(thread, "ulp-agent");
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

/* fork() keeps only the calling thread: the child gets an agent of its own
 * and can be patched independently. */
static void restart_agent_in_child(void)
{
    start_agent();
}

__attribute__((constructor)) static void ulp_runtime_init(void)
{
    start_agent();
    pthread_atfork(NULL, NULL, restart_agent_in_child);
}
