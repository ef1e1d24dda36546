/* The agent on demand (ULP_AGENT=demand): a process that is never patched
 * stays exactly as single-threaded as without the runtime.
 *
 * The agent is a thread, and starting a thread (pthread_create: malloc,
 * the thread stack cache, the TLS of the loader) is safe only where the
 * thread that starts it holds none of the C library's or the loader's
 * state.  The trigger finds such a thread: one stopped inside a blocking
 * system call that the C library's own wrapper made (read, poll, a sleep,
 * a wait...), none of which the allocator, the stack cache or the TLS
 * setup makes, with no signal frame on its stack (trigger/demand.py).  It writes the registers the thread must
 * resume with (struct demand_resume; the system call made again, as the
 * kernel restarts one after a signal) on the thread's own stack below the
 * red zone, points the thread at ulp_demand_start with %rsp there, and
 * lets it go.
 *
 * ulp_demand_start needs no trigger to finish: it saves the vector
 * registers below that block, starts the agent, restores them and every
 * other register from the block, and jumps back into the system call.  A
 * trigger killed meanwhile leaves the thread doing exactly that.  Each
 * hijacked thread has its block on its own stack, and two triggers at once
 * start one agent: the first to get here wins. */
#include <stdint.h>

#include "ulp_internal.h"

/* The block the trigger writes at the hijacked thread's %rsp, in the order
 * of struct user_regs_struct for the registers it restores. */
struct demand_resume {
    uint64_t r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi;
    uint64_t rip, rflags, rsp;
};

/* On the hijacked thread: start the agent unless another trigger did. */
ULP_HIDDEN __attribute__((used)) void ulp_start_agent_on_demand(void)
{
    uint32_t demand = ULP_AGENT_DEMAND;
    if (__atomic_compare_exchange_n(&ulp_mailbox.state, &demand, ULP_AGENT_STARTING, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ulp_start_agent();
}

/* %rsp = the block, 64-byte aligned, at least 192 bytes below the thread's
 * own %rsp; 4 KiB below it for the XSAVE image, the call stack under that. */
__asm__(".text\n"
        ".globl ulp_demand_start\n"
        ".type ulp_demand_start, @function\n"
        "ulp_demand_start:\n"
        "    movq %rsp, %rbx\n"                 /* the block: kept across the call */
        "    subq $4096, %rsp\n"
        /* XSAVE writes only the header bits of the components it saves,
         * and XRSTOR faults on any other bit set: this is stack, not a
         * zeroed buffer, so the 64-byte header is cleared first */
        "    movq $0, 512(%rsp)\n"
        "    movq $0, 520(%rsp)\n    movq $0, 528(%rsp)\n    movq $0, 536(%rsp)\n"
        "    movq $0, 544(%rsp)\n    movq $0, 552(%rsp)\n    movq $0, 560(%rsp)\n"
        "    movq $0, 568(%rsp)\n"
        "    movl $0xe7, %eax\n"                /* x87 SSE AVX AVX-512, as enabled in XCR0 */
        "    xorl %edx, %edx\n"
        "    xsave64 (%rsp)\n"
        "    call ulp_start_agent_on_demand\n"
        "    movl $0xe7, %eax\n"
        "    xorl %edx, %edx\n"
        "    xrstor64 (%rsp)\n"
        "    movq %rbx, %rsp\n"
        /* %rip goes where "ret $136" finds it once %rsp is the thread's own
         * minus 144: below the red zone, above this block */
        "    movq 120(%rsp), %rax\n"
        "    movq 136(%rsp), %rcx\n"
        "    movq %rax, -144(%rcx)\n"
        "    pushq 128(%rsp)\n"                 /* rflags (the address is taken before the push) */
        "    popfq\n"
        "    movq 0(%rsp), %r15\n"
        "    movq 8(%rsp), %r14\n"
        "    movq 16(%rsp), %r13\n"
        "    movq 24(%rsp), %r12\n"
        "    movq 32(%rsp), %rbp\n"
        "    movq 40(%rsp), %rbx\n"
        "    movq 48(%rsp), %r11\n"
        "    movq 56(%rsp), %r10\n"
        "    movq 64(%rsp), %r9\n"
        "    movq 72(%rsp), %r8\n"
        "    movq 80(%rsp), %rax\n"
        "    movq 88(%rsp), %rcx\n"
        "    movq 96(%rsp), %rdx\n"
        "    movq 104(%rsp), %rsi\n"
        "    movq 112(%rsp), %rdi\n"
        "    movq 136(%rsp), %rsp\n"
        "    leaq -144(%rsp), %rsp\n"          /* lea: the flags stay as restored */
        "    ret $136\n"
        ".size ulp_demand_start, .-ulp_demand_start\n");

_Static_assert(__builtin_offsetof(struct demand_resume, rip) == 120, "rip");
_Static_assert(__builtin_offsetof(struct demand_resume, rflags) == 128, "rflags");
_Static_assert(__builtin_offsetof(struct demand_resume, rsp) == 136, "rsp");
_Static_assert(sizeof(struct demand_resume) == 144, "size");
