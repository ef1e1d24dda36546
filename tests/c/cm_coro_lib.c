/* A library whose activation hands control to a coroutine (through the
 * program's callback) that calls the library again on its own stack. */
int coro_tag(void)
{
    return 1;
}

/* Returns the tags seen before and after the callback, as 10*before+after. */
int coro_run(void (*callback)(void))
{
    int before = coro_tag();
    callback();
    int after = coro_tag();
    return 10 * before + after;
}

/* Says it spins (*SPINNING), spins until *GO, then returns the tag: a call
 * the activation makes only after whatever interrupted the loop. */
int coro_spin(volatile int *spinning, volatile int *go)
{
    *spinning = 1;
    while (!*go)
        ;
    return coro_tag();
}
