/* The target program of the lifecycle tests (tests/test_lifecycle.py).
 *
 * Arguments: none; "execd" (printed first: this image came from an execve);
 * "pthread-exit" (the main thread starts a thread running the command loop,
 * then calls pthread_exit: the process must end when that thread returns).
 * It prints "ready" (or "execd"), then answers one line per command:
 *   open K PATH     dlopen PATH (RTLD_NOW | RTLD_LOCAL) as handle K (0-7)
 *   call K          lc_value() of handle K
 *   close K         dlclose handle K
 *   threads         the number of threads of the process
 *   fork-unshare    a fork child tries unshare(CLONE_NEWUSER): its result and
 *                   the child's number of threads
 *   exec-traced D   a thread execs this program ("execd") D microseconds
 *                   after it sees a trigger at work: the ulp agent traced,
 *                   or an answer of the agent (the mailbox serial moved)
 *   fork-loop PATH  a thread forks until "fork-result": each child dlopens
 *                   PATH and exits 0 if it could (killed by SIGALRM after
 *                   5 s if the loader hangs)
 *   fork-result     stops the loop: "forks=N bad=B" (B: children that did
 *                   not exit 0)
 *   fork-child      "child=PID": a child that waits for "child-end" (the end
 *                   of a pipe) doing nothing else, with an agent of its own
 *   child-end       "child-ended 1" once that child exited 0 ("... 0" else)
 *   bench N         N rounds of 256 malloc(200) then 256 free: ns per pair
 *   spin MS         "spinning", then busy for MS milliseconds with no system
 *                   call, then "spun"
 *   handoff         (main thread) a new thread takes the command loop, the
 *                   main thread calls pthread_exit
 *   end             the command loop returns */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ulp_abi.h"

static void *handles[8];

static int count_threads(void)
{
    char line[256];
    int threads = -1;
    FILE *status = fopen("/proc/self/status", "r");
    while (status && fgets(line, sizeof line, status))
        if (strncmp(line, "Threads:", 8) == 0)
            threads = atoi(line + 8);
    if (status)
        fclose(status);
    return threads;
}

static void fork_unshare(void)
{
    int fds[2];
    if (pipe(fds) != 0)
        return;
    pid_t child = fork();
    if (child == 0) {
        char text[64];
        int threads = count_threads();
        int ok = unshare(CLONE_NEWUSER) == 0;
        int len = snprintf(text, sizeof text, "unshare=%s child-threads=%d\n",
                           ok ? "ok" : strerrorname_np(errno), threads);
        (void)!write(fds[1], text, len);
        _exit(0);
    }
    close(fds[1]);
    char text[64] = {0};
    (void)!read(fds[0], text, sizeof text - 1);
    close(fds[0]);
    waitpid(child, NULL, 0);
    fputs(text, stdout);
}

static struct {
    pthread_t thread;
    char path[4000];
    int stop;
    int forks, bad;
} fork_loop;

static int fork_and_dlopen(const char *path)
{
    pid_t child = fork();
    if (child == 0) {
        alarm(5);
        _exit(dlopen(path, RTLD_NOW | RTLD_LOCAL) ? 0 : 1);
    }
    int status = 0;
    return child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
           WEXITSTATUS(status) == 0;
}

static void *fork_repeatedly(void *unused)
{
    (void)unused;
    while (!__atomic_load_n(&fork_loop.stop, __ATOMIC_ACQUIRE)) {
        fork_loop.bad += !fork_and_dlopen(fork_loop.path);
        fork_loop.forks++;
    }
    return NULL;
}

static struct {
    pid_t pid;
    int pipe;
} idle_child = {0, -1};

/* The child says it runs before its PID is printed: until fork() has
 * returned in it, its fork handlers (the runtime's starts its agent) may
 * not have run, and its mailbox is still the parent's copy. */
static void fork_idle_child(void)
{
    int fds[2], started[2];
    char byte;
    if (pipe(fds) != 0 || pipe(started) != 0) {
        printf("fork-child failed\n");
        return;
    }
    pid_t child = fork();
    if (child == 0) {
        close(fds[1]);
        close(started[0]);
        if (write(started[1], "s", 1) != 1)
            _exit(1);
        while (read(fds[0], &byte, 1) > 0)
            ;
        _exit(0);
    }
    close(fds[0]);
    close(started[1]);
    int ok = child > 0 && read(started[0], &byte, 1) == 1;
    close(started[0]);
    if (!ok) {
        close(fds[1]);
        printf("fork-child failed\n");
        return;
    }
    idle_child.pid = child;
    idle_child.pipe = fds[1];
    printf("child=%d\n", child);
}

static void end_idle_child(void)
{
    int status = 0;
    close(idle_child.pipe);
    idle_child.pipe = -1;
    int ended = waitpid(idle_child.pid, &status, 0) == idle_child.pid && WIFEXITED(status) &&
                WEXITSTATUS(status) == 0;
    printf("child-ended %d\n", ended);
}

static char *self_argv0;
static long exec_delay_us;
static int agent_tid;

static int agent_is_traced(void)
{
    char path[64], line[256];
    int tracer = 0;
    snprintf(path, sizeof path, "/proc/self/task/%d/status", agent_tid);
    FILE *status = fopen(path, "r");
    while (status && fgets(line, sizeof line, status))
        if (strncmp(line, "TracerPid:", 10) == 0)
            tracer = atoi(line + 10);
    if (status)
        fclose(status);
    return tracer != 0;
}

static const struct ulp_mailbox *mailbox;
static uint32_t armed_serial;

/* A trigger has come: it holds the agent now, or it has held it (the agent
 * answered one of its requests).  Watching for "traced" alone can miss a
 * whole apply: the trigger and the agent it holds run at real-time
 * priority, so on a busy machine this thread may not run until both are
 * done, and then it would wait for a trigger that never comes again. */
static int trigger_came(void)
{
    return agent_is_traced() ||
           __atomic_load_n(&mailbox->serial, __ATOMIC_ACQUIRE) != armed_serial;
}

static void *exec_when_traced(void *unused)
{
    (void)unused;
    struct timespec pause = {0, 100 * 1000};
    while (!trigger_came())
        nanosleep(&pause, NULL);
    struct timespec delay = {0, exec_delay_us * 1000};
    nanosleep(&delay, NULL);
    char *argv[] = {self_argv0, "execd", NULL};
    execv("/proc/self/exe", argv);
    printf("exec failed: %s\n", strerror(errno));
    return NULL;
}

/* The agent's thread ID, from the thread list: thread IDs are not
 * consecutive (other processes take numbers in between, and they wrap at
 * pid_max, 32768 on many machines). */
static int find_agent(void)
{
    char path[300], name[64];
    int agent = 0;
    DIR *tasks = opendir("/proc/self/task");
    struct dirent *entry;
    while (tasks && !agent && (entry = readdir(tasks)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", entry->d_name);
        FILE *comm = fopen(path, "r");
        if (!comm)
            continue;
        if (fgets(name, sizeof name, comm) && strncmp(name, "ulp-agent", 9) == 0)
            agent = atoi(entry->d_name);
        fclose(comm);
    }
    if (tasks)
        closedir(tasks);
    return agent;
}

static void bench(long rounds)
{
    void *blocks[256];
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < 256; i++)
            blocks[i] = malloc(200);
        for (int i = 0; i < 256; i++)
            free(blocks[i]);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("bench ns=%.2f\n", ns / (rounds * 256.0));
}

static void spin(long ms)
{
    struct timespec start, now;
    printf("spinning\n");
    fflush(stdout);
    clock_gettime(CLOCK_MONOTONIC, &start);     /* the vDSO: no system call */
    do
        clock_gettime(CLOCK_MONOTONIC, &now);
    while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
    printf("spun\n");
}

static void *command_loop(void *unused)
{
    char line[4096];
    (void)unused;
    while (fgets(line, sizeof line, stdin)) {
        int k = 0;
        char path[4000];
        line[strcspn(line, "\n")] = '\0';
        if (sscanf(line, "open %d %3999s", &k, path) == 2 && k >= 0 && k < 8) {
            handles[k] = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            printf(handles[k] ? "opened\n" : "open failed: %s\n", dlerror());
        } else if (sscanf(line, "call %d", &k) == 1 && k >= 0 && k < 8 && handles[k]) {
            int (*value)(void) = (int (*)(void))dlsym(handles[k], "lc_value");
            printf("value=%d\n", value ? value() : -1);
        } else if (sscanf(line, "close %d", &k) == 1 && k >= 0 && k < 8 && handles[k]) {
            dlclose(handles[k]);
            handles[k] = NULL;
            printf("closed\n");
        } else if (strcmp(line, "threads") == 0) {
            printf("threads=%d\n", count_threads());
        } else if (strcmp(line, "fork-unshare") == 0) {
            fork_unshare();
        } else if (strcmp(line, "fork-child") == 0) {
            fork_idle_child();
        } else if (strcmp(line, "child-end") == 0 && idle_child.pipe >= 0) {
            end_idle_child();
        } else if (sscanf(line, "exec-traced %ld", &exec_delay_us) == 1) {
            pthread_t thread;
            agent_tid = find_agent();
            mailbox = dlsym(RTLD_DEFAULT, "ulp_mailbox");
            if (mailbox)
                armed_serial = __atomic_load_n(&mailbox->serial, __ATOMIC_ACQUIRE);
            if (!agent_tid || !mailbox ||
                pthread_create(&thread, NULL, exec_when_traced, NULL) != 0)
                printf("exec-traced failed\n");
            else
                printf("armed\n");
        } else if (sscanf(line, "fork-loop %3999s", fork_loop.path) == 1) {
            fork_loop.stop = 0;
            if (pthread_create(&fork_loop.thread, NULL, fork_repeatedly, NULL) != 0)
                printf("fork-loop failed\n");
            else
                printf("forking\n");
        } else if (strcmp(line, "fork-result") == 0) {
            __atomic_store_n(&fork_loop.stop, 1, __ATOMIC_RELEASE);
            pthread_join(fork_loop.thread, NULL);
            printf("forks=%d bad=%d\n", fork_loop.forks, fork_loop.bad);
        } else if (strncmp(line, "spin ", 5) == 0) {
            spin(atol(line + 5));
        } else if (strncmp(line, "bench ", 6) == 0) {
            bench(atol(line + 6));
        } else if (strcmp(line, "handoff") == 0) {
            return (void *)1;
        } else if (strcmp(line, "end") == 0) {
            break;
        } else {
            printf("unknown command %s\n", line);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    self_argv0 = argv[0];
    pthread_t thread;
    if (argc > 1 && strcmp(argv[1], "pthread-exit") == 0) {
        if (pthread_create(&thread, NULL, command_loop, NULL) != 0)
            return 2;
        printf("ready\n");
        pthread_exit(NULL);
    }
    printf(argc > 1 && strcmp(argv[1], "execd") == 0 ? "execd\n" : "ready\n");
    if (command_loop(NULL) == NULL)
        return 0;
    if (pthread_create(&thread, NULL, command_loop, NULL) != 0)
        return 2;
    printf("handed\n");
    pthread_exit(NULL);
}
