/* The fix for add(): it reaches the library's static `total`, its
 * thread-local `calls` and its hidden scaled() through references the ulp
 * runtime fills when it applies the patch, and calls the exported
 * thread_calls() by name (the patch .so is linked with libtally.so). */
#include <stddef.h>

/* glibc's argument of __tls_get_addr: the module and the offset of a
 * thread-local variable; the runtime fills it (#%calls:calls_ref) */
typedef struct {
    unsigned long module;
    unsigned long offset;
} tls_index;
void *__tls_get_addr(tls_index *index);

long *total_ref;                /* #total:total_ref */
tls_index calls_ref;            /* #%calls:calls_ref */
long (*scaled_ref)(long);       /* #scaled:scaled_ref */

long thread_calls(void);

long add_fixed(long amount)
{
    long *calls = __tls_get_addr(&calls_ref);   /* this thread's own */
    *calls += 1;
    *total_ref += scaled_ref(amount);
    return *total_ref + 0 * thread_calls();
}
