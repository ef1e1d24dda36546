/* The target library: a static total shared by all threads, and a
 * thread-local count of each thread's calls.  add() has the bug: it does
 * not count the call in the thread's own count. */
static long total;
static __thread long calls;

long add(long amount)
{
    total += amount;            /* the bug: forgets calls++ */
    return total;
}

long thread_calls(void)
{
    return calls;
}

void reset_calls(void)
{
    calls = 0;
}

/* hidden: not exported, callable from the patch through a reference */
__attribute__((noipa, visibility("hidden"))) long scaled(long amount)
{
    return amount * 10;
}
