/* Alternate signal stacks.  The tracker must know when it runs on one: a
 * handler there may interrupt an activation of a library whose stack slot
 * lies elsewhere, even above it.  The runtime interposes sigaltstack() to
 * remember each thread's alternate stack; a stack set with the raw system
 * call is not seen (docs/consistency.md). */
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ulp_internal.h"

ULP_HIDDEN __thread struct ulp_altstack ulp_altstack __attribute__((tls_model("initial-exec")));

ULP_EXPORT int sigaltstack(const stack_t *restrict ss, stack_t *restrict old_ss)
{
    int ret = (int)syscall(SYS_sigaltstack, ss, old_ss);
    if (ret == 0 && ss) {
        if (ss->ss_flags & SS_DISABLE) {
            ulp_altstack.low = ulp_altstack.high = 0;
        } else {
            ulp_altstack.low = (uintptr_t)ss->ss_sp;
            ulp_altstack.high = (uintptr_t)ss->ss_sp + ss->ss_size;
        }
    }
    return ret;
}
