/* N idle processes for the fleet benchmark (bench/operators.py --fleet), as
 * libpulp's tests/stress.c makes them: this process forks N children; each
 * calls into the prepared library once, says so on a pipe, then waits for
 * the end of standard input (shared by all: the bench closes it once).  The
 * parent prints "ready N" once every child has, then waits too and reaps
 * them all.  With the runtime preloaded, every child has its own agent
 * (runtime/agent.c restarts it after fork): N + 1 processes to patch. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int lib_value(void);

static void wait_for_end_of_input(void)
{
    char buffer[64];
    while (read(0, buffer, sizeof buffer) > 0)
        ;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 0, ready[2];
    if (n <= 0 || pipe(ready) != 0)
        return 2;
    lib_value();
    for (int i = 0; i < n; i++) {
        pid_t child = fork();
        if (child < 0) {
            perror("fork");
            return 1;
        }
        if (child == 0) {
            close(ready[0]);
            lib_value();
            if (write(ready[1], "x", 1) != 1)
                _exit(1);
            wait_for_end_of_input();
            _exit(0);
        }
    }
    close(ready[1]);
    char mark;
    for (int seen = 0; seen < n; seen++)
        if (read(ready[0], &mark, 1) != 1)
            return 1;
    printf("ready %d\n", n);
    fflush(stdout);
    wait_for_end_of_input();
    int failed = 0, status;
    while (wait(&status) > 0)
        failed += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    return failed != 0;
}
