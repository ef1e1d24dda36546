/* The runtime's message log (runtime/log.c) under writers that race: THREADS
 * threads write records as fast as they can while a 2 kHz SIGALRM (process-wide
 * timer, delivered to any of them) writes more from inside the handler, often in the
 * middle of the interrupted thread's own write.  Built with -rdynamic so that
 * `ulp messages PID` finds ulp_log in the executable.
 *
 * Every text can be checked on its own: "w<writer> n<count> c<check> <filler>",
 * check = count * 7919 % 100003 and the filler a letter that follows from it,
 * so a record mixed from two writes shows.  Prints "ready" once every writer
 * has written, then runs until stdin closes. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/time.h>
#include <unistd.h>

#define THREADS 4

void ulp_log_message(uint32_t kind, uint64_t address, const char *text_format, ...);

/* log.c's library names come from the registry, which is not linked here. */
struct ulp_lib_desc;
struct ulp_lib_desc *ulp_library_in_slot(int slot)
{
    (void)slot;
    return NULL;
}

static atomic_int started;
static atomic_ulong counter;

static void write_one(unsigned writer)
{
    unsigned long n = atomic_fetch_add(&counter, 1);
    unsigned long check = n * 7919 % 100003;
    char filler[2] = {(char)('a' + check % 26), 0};
    ulp_log_message(2, n, "w%u n%lu c%lu %s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s", writer, n,
                    check, filler, filler, filler, filler, filler, filler, filler, filler,
                    filler, filler, filler, filler, filler, filler, filler, filler, filler,
                    filler, filler, filler);
}

static void on_alarm(int sig)
{
    (void)sig;
    write_one(99);
}

static void *writer(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    atomic_fetch_add(&started, 1);
    for (;;)
        write_one(id);
    return NULL;
}

int main(void)
{
    pthread_t threads[THREADS];
    struct sigaction action = {.sa_handler = on_alarm, .sa_flags = SA_RESTART};
    sigaction(SIGALRM, &action, NULL);
    struct itimerval every = {{0, 500}, {0, 500}};
    setitimer(ITIMER_REAL, &every, NULL);
    for (uintptr_t i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, writer, (void *)i);
    while (atomic_load(&started) < THREADS || atomic_load(&counter) < 10000)
        usleep(1000);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    char buffer[64];
    while (fgets(buffer, sizeof buffer, stdin))
        ;
    return 0;
}
