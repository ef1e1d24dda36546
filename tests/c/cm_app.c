/* The program of most consistency-model tests.  The main thread reads
 * commands on stdin; a worker thread W runs jobs the main thread hands it
 * ("w JOB") and prints their results.  Code that must stay inside the
 * library blocks on the release pipe ("release" writes one byte).
 *
 * argv[1] chooses W's alternate signal stack: none, malloc (allocated by the
 * main thread from the heap, below W's stack), raw (the same, installed with
 * the raw system call, not through sigaltstack()) or above (W runs on a
 * stack we mmap ourselves, the alternate stack is placed above it in the
 * same mapping). */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int lib_tag(void);
int lib_tag_nested(void);
int lib_value(void);
int lib_other(void);
int lib_hold(int fd);
int lib_spin(void);
void lib_spin_stop(void);
long lib_spin_iterations(void);
int lib_sort(int *a, int n, int (*cmp)(const int *, const int *), int *seen);
int lib_call(int (*cb)(void));
typedef int (*pointer_entry)(int (*cb)(void));
pointer_entry lib_pointer_entry(void);
int lib_rec(int depth, int max, int block_at, int fd, char *seen);

#define ALTSTACK_SIZE (64 * 1024) /* below the mmap threshold: malloc takes it from the heap */
#define W_STACK_SIZE (1024 * 1024)

static int job_pipe[2], release_pipe[2];
static pthread_t worker;
static char *altstack;
static sem_t handler_done;
static volatile int handler_tag, handler_nested;
static volatile uintptr_t handler_sp;

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void on_signal(int sig)
{
    (void)sig;
    char here;
    handler_sp = (uintptr_t)&here;
    handler_tag = lib_tag();
    handler_nested = lib_tag_nested();
    sem_post(&handler_done);
}

/* ---- jobs of W ---- */

__attribute__((noinline)) static int deep(int n)
{
    volatile char frame[64];
    frame[0] = (char)n;
    if (n == 0)
        return lib_tag();
    int r = deep(n - 1);
    return r + (frame[0] - (char)n);
}

static int cb_seen[256], cb_count;

static int cmp_blocking(const int *a, const int *b)
{
    if (cb_count == 0) {
        char byte;
        cb_seen[cb_count++] = lib_tag();
        if (write(1, "cmp inside\n", 11) != 11)
            die("write");
        while (read(release_pipe[0], &byte, 1) < 0 && errno == EINTR)
            ;
    }
    if (cb_count < 256)
        cb_seen[cb_count++] = lib_tag();
    return (*a > *b) - (*a < *b);
}

/* Blocks inside the library's activation until "release", then enters the
 * library from outside. */
static int cb_block(void)
{
    char byte;
    printf("pointer inside\n");
    while (read(release_pipe[0], &byte, 1) < 0 && errno == EINTR)
        ;
    return lib_tag();
}

static jmp_buf escape;
static int escape_tag;

static int cb_longjmp(void)
{
    escape_tag = lib_tag();
    longjmp(escape, 1);
}

static void tags_to_string(const int *tags, int n, char *out)
{
    for (int i = 0; i < n; i++)
        out[i] = (char)('0' + tags[i]);
    out[n] = 0;
}

static void run_job(char *job)
{
    if (strcmp(job, "tag") == 0) {
        printf("w tag=%d\n", lib_tag());
    } else if (strncmp(job, "deep ", 5) == 0) {
        printf("w deep tag=%d\n", deep(atoi(job + 5)));
    } else if (strcmp(job, "hold") == 0) {
        printf("w hold=%d\n", lib_hold(release_pipe[0]));
    } else if (strcmp(job, "spin") == 0) {
        printf("w spin seen=%d\n", lib_spin());
    } else if (strcmp(job, "sort") == 0) {
        int a[] = {5, 3, 9, 1, 7, 2, 8};
        int seen[64];
        char lib_s[65], cb_s[257];
        cb_count = 0;
        int k = lib_sort(a, 7, cmp_blocking, seen);
        tags_to_string(seen, k, lib_s);
        tags_to_string(cb_seen, cb_count, cb_s);
        printf("w sort %d%d%d%d%d%d%d lib=%s cb=%s\n", a[0], a[1], a[2], a[3], a[4], a[5],
               a[6], lib_s, cb_s);
    } else if (strcmp(job, "pointer") == 0) {
        printf("w pointer=%d\n", lib_pointer_entry()(cb_block));
    } else if (strcmp(job, "longjmp") == 0) {
        if (setjmp(escape) == 0) {
            lib_call(cb_longjmp);
            printf("w longjmp not taken\n");
        } else {
            printf("w longjmp escaped tag=%d\n", escape_tag);
        }
    } else if (strncmp(job, "rec ", 4) == 0) {
        int max, block_at;
        char seen[256] = {0};
        if (sscanf(job + 4, "%d %d", &max, &block_at) != 2 || max > 250)
            die("rec");
        int sum = lib_rec(0, max, block_at, release_pipe[0], seen);
        printf("w rec %s sum=%d\n", seen, sum);
    } else {
        printf("w unknown job %s\n", job);
    }
}

static void *worker_main(void *arg)
{
    const char *mode = arg;
    char here, line[128];
    if (altstack) {
        stack_t ss = {.ss_sp = altstack, .ss_size = ALTSTACK_SIZE, .ss_flags = 0};
        if ((strcmp(mode, "raw") == 0 ? syscall(SYS_sigaltstack, &ss, NULL)
                                       : sigaltstack(&ss, NULL)) != 0)
            die("sigaltstack");
    }
    const char *where = !altstack ? "none"
                        : (uintptr_t)altstack > (uintptr_t)&here ? "above" : "below";
    printf("w ready mode=%s altstack=%s\n", mode, where);
    FILE *jobs = fdopen(job_pipe[0], "r");
    while (fgets(line, sizeof line, jobs)) {
        line[strcspn(line, "\n")] = 0;
        run_job(line);
    }
    return NULL;
}

/* ---- the main thread ---- */

static void spin_wait(long more)
{
    long target = lib_spin_iterations() + more;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (lib_spin_iterations() < target) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 20) {
            printf("spin timeout\n");
            return;
        }
        sched_yield();
    }
    printf("spun\n");
}

static void send_signal(void)
{
    struct timespec deadline;
    int err = pthread_kill(worker, SIGUSR1);
    if (err) {
        printf("pthread_kill failed %d\n", err);
        return;
    }
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    while (sem_timedwait(&handler_done, &deadline) != 0)
        if (errno != EINTR) {
            printf("handler timeout\n");
            return;
        }
    uintptr_t alt = (uintptr_t)altstack;
    int on_alt = altstack && handler_sp >= alt && handler_sp < alt + ALTSTACK_SIZE;
    printf("handler tag=%d nested=%d on=%s\n", handler_tag, handler_nested,
           on_alt ? "altstack" : "thread-stack");
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "none";
    char line[128];
    pthread_attr_t attr;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe(job_pipe) || pipe(release_pipe))
        die("pipe");
    sem_init(&handler_done, 0, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);

    pthread_attr_init(&attr);
    if (strcmp(mode, "malloc") == 0 || strcmp(mode, "raw") == 0) {
        altstack = malloc(ALTSTACK_SIZE);
    } else if (strcmp(mode, "above") == 0) {
        /* one mapping: W's stack at the bottom, a guard page, the alternate
         * stack at the top, so the alternate stack is above every frame of W */
        size_t total = W_STACK_SIZE + 4096 + ALTSTACK_SIZE;
        char *region = mmap(NULL, total, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (region == MAP_FAILED)
            die("mmap");
        mprotect(region + W_STACK_SIZE, 4096, PROT_NONE);
        altstack = region + W_STACK_SIZE + 4096;
        if (pthread_attr_setstack(&attr, region, W_STACK_SIZE))
            die("pthread_attr_setstack");
    }
    if (pthread_create(&worker, &attr, worker_main, (void *)mode))
        die("pthread_create");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "w ", 2) == 0) {
            size_t n = strlen(line + 2);
            line[2 + n] = '\n';
            if (write(job_pipe[1], line + 2, n + 1) != (ssize_t)(n + 1))
                die("write job");
        } else if (strcmp(line, "tag") == 0) {
            printf("main tag=%d\n", lib_tag());
        } else if (strcmp(line, "values") == 0) {
            printf("value=%d other=%d\n", lib_value(), lib_other());
        } else if (strcmp(line, "release") == 0) {
            if (write(release_pipe[1], "x", 1) != 1)
                die("write release");
        } else if (strcmp(line, "signal") == 0) {
            send_signal();
        } else if (strncmp(line, "spinwait ", 9) == 0) {
            spin_wait(atol(line + 9));
        } else if (strcmp(line, "spinstop") == 0) {
            lib_spin_stop();
        } else {
            printf("unknown command %s\n", line);
        }
    }
    return 0;
}
