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

/* coro_run, but between the callback and the second tag it says it spins
 * (*SPINNING) and spins until *GO: after a resume, the activation runs in
 * the library with no return address into it on its stack for as long as
 * the test wants. */
int coro_run_then_spin(void (*callback)(void), volatile int *spinning, volatile int *go)
{
    int before = coro_tag();
    callback();
    *spinning = 1;
    while (!*go)
        ;
    int after = coro_tag();
    return 10 * before + after;
}

/* coro_spin, but its call comes before the return (not a tail jump, which
 * would end the activation): returns 10 + the tag. */
int coro_spin_then_tag(volatile int *spinning, volatile int *go)
{
    *spinning = 1;
    while (!*go)
        ;
    return 10 + coro_tag();
}
