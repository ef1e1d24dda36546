/* A plugin, loaded with RTLD_LOCAL, that makes a boost.context coroutine:
 * its libboost_context is in its own scope only, not in the global one
 * where the preloaded runtime's make_fcontext sits.  plugin_run() returns
 * what the coroutine hands back (42), -1 if make_fcontext failed. */
#include <stdio.h>
#include <stdlib.h>
typedef void *fcontext_t;
typedef struct { fcontext_t fctx; void *data; } transfer_t;
transfer_t jump_fcontext(fcontext_t const to, void *vp);
fcontext_t make_fcontext(void *sp, size_t size, void (*fn)(transfer_t));
static void body(transfer_t t) { jump_fcontext(t.fctx, (void *)42); }
int plugin_run(void)
{
    char *stack = malloc(65536);
    fcontext_t c = make_fcontext(stack + 65536, 65536, body);
    if (!c) return -1;
    transfer_t t = jump_fcontext(c, NULL);
    return (int)(long)t.data;
}
