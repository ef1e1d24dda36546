/* A parent that watches its child the way a shell or a supervisor does:
 * with waitpid(WUNTRACED | WCONTINUED).  ts_parent PROGRAM ARGS... runs the
 * child with its stdin on a pipe and shares stdout.  Commands on stdin:
 *   child TEXT   forward TEXT (one line) to the child
 *   events       print how many stops and continues of the child were seen
 *                (waitpid WNOHANG, plus a pending SIGCHLD) */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int stops, continues, sigchlds;

static void collect(pid_t child)
{
    int status;
    pid_t got;
    while ((got = waitpid(child, &status, WUNTRACED | WCONTINUED | WNOHANG)) == child) {
        if (WIFSTOPPED(status))
            stops++;
        else if (WIFCONTINUED(status))
            continues++;
    }
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGCHLD)) {
        int sig;
        sigset_t only;
        sigemptyset(&only);
        sigaddset(&only, SIGCHLD);
        sigwait(&only, &sig);
        sigchlds++;
    }
}

int main(int argc, char **argv)
{
    int to_child[2];
    char line[256];
    sigset_t block;

    if (argc < 2)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigemptyset(&block);
    sigaddset(&block, SIGCHLD);
    sigprocmask(SIG_BLOCK, &block, NULL);   /* SIGCHLD stays pending: we count it */
    if (pipe(to_child) != 0)
        return 2;
    pid_t child = fork();
    if (child == 0) {
        sigprocmask(SIG_UNBLOCK, &block, NULL);
        dup2(to_child[0], 0);
        close(to_child[0]);
        close(to_child[1]);
        execv(argv[1], argv + 1);
        _exit(127);
    }
    close(to_child[0]);
    printf("child %d\n", (int)child);
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "child ", 6) == 0) {
            write(to_child[1], line + 6, strlen(line + 6));
        } else if (strncmp(line, "events", 6) == 0) {
            collect(child);
            printf("events stops=%d continues=%d sigchld=%d\n", stops, continues, sigchlds);
        } else {
            printf("unknown command\n");
        }
    }
    close(to_child[1]);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}
