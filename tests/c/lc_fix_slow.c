/* A patch of lc_lib.c that takes a while to load: the resolver of its
 * IFUNC, which ld.so calls while it relocates the object (inside dlopen,
 * holding the loader's lock, with the loader's list of objects marked as
 * changing: _r_debug.r_state == RT_ADD), sleeps for 300 ms.  A raw system
 * call: nothing of the object may be called before it is relocated. */
#include <sys/syscall.h>
#include <time.h>

static int slow_impl(void)
{
    return 4;
}

static void *resolve_slow_to_load(void)
{
    struct timespec pause = {0, 300 * 1000 * 1000};
    long result;
    __asm__ volatile("syscall"
                     : "=a"(result)
                     : "0"((long)SYS_nanosleep), "D"(&pause), "S"(0)
                     : "rcx", "r11", "memory");
    (void)result;
    return slow_impl;
}

/* Local, and its address taken: an R_X86_64_IRELATIVE relocation, which
 * ld.so resolves at load time by calling the resolver. */
static int slow_to_load(void) __attribute__((ifunc("resolve_slow_to_load")));
int (*lc_slow_pointer)(void) = slow_to_load;

int lc_value_v4(void)
{
    return lc_slow_pointer();
}
