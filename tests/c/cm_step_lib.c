/* The library of the tracker tests (tests/test_tracker_signals.py).
 * lib_tag says which version runs (the original: 1).  lib_act is one
 * activation that records its own version and enters the library every
 * way the tracker knows: through the PLT from the library itself, by a
 * direct call (the patched entry's stub), and from the program's callback.
 * The patches (cm_step_fix*.c) replace both. */
__attribute__((noipa)) int lib_tag(void)
{
    return 1;
}

extern int lib_tag_local(void) __attribute__((alias("lib_tag"), visibility("hidden")));

typedef void (*step_callback)(int *tags, int *n);

__attribute__((noipa)) int lib_act(step_callback callback, int *tags, int *n)
{
    tags[(*n)++] = 1;
    tags[(*n)++] = lib_tag();
    tags[(*n)++] = lib_tag_local();
    callback(tags, n);
    tags[(*n)++] = lib_tag();
    return *n;
}

extern int lib_act_local(step_callback, int *, int *)
    __attribute__((alias("lib_act"), visibility("hidden")));

/* The real entry of lib_act (its .dynsym name points at its trampoline). */
void *lib_act_entry(void)
{
    return (void *)lib_act_local;
}

/* For the stale-stack test: where this call's return address is stored,
 * and its value (the tracker records exactly these for an external entry). */
__attribute__((noipa)) void lib_where(unsigned long *slot, unsigned long *ret)
{
    *slot = (unsigned long)__builtin_frame_address(0) + sizeof(void *);
    *ret = (unsigned long)__builtin_return_address(0);
}

/* A word a live activation of the library leaves on a stack: a return
 * address into its code. */
__attribute__((noipa)) static unsigned long return_address_here(void)
{
    return (unsigned long)__builtin_return_address(0);
}

__attribute__((noipa)) unsigned long lib_code_word(void)
{
    unsigned long word = return_address_here();
    __asm__ volatile("" ::: "memory");     /* a real call, not a tail jump */
    return word;
}

/* One activation that writes over its caller's buffer (destroying any stale
 * word there), then calls back into the program. */
__attribute__((noipa)) int lib_scribble(unsigned long *buffer, int words,
                                        step_callback callback, int *tags, int *n)
{
    tags[(*n)++] = lib_tag();
    for (int i = 0; i < words; i++)
        ((volatile unsigned long *)buffer)[i] = 0;
    callback(tags, n);
    tags[(*n)++] = lib_tag();
    return *n;
}

/* Callbacks nested DEPTH deep: each level records its version before and
 * after calling back into the program, which enters the next level. */
typedef void (*nest_callback)(int depth, int *tags, int *n);

__attribute__((noipa)) int lib_nest(int depth, nest_callback callback, int *tags, int *n)
{
    tags[(*n)++] = lib_tag();
    callback(depth, tags, n);
    tags[(*n)++] = lib_tag();
    return *n;
}
