/* Case 12: calls the tag functions of every shape library.
 *   call       -> "sym=.. weak=.. cet=.. page=.. a=.. b=.." (NAME_twice for sym)
 *   dlopen P   -> dlopen the prepared library P (after start-up): "dl loaded"
 *   dl         -> "dl=N" through dlsym'ed dl_tag
 *   fork       -> fork; the child reads its commands from a pipe the parent
 *                 feeds ("child CMD"), prints "child pid=N", answers with
 *                 lines prefixed "child "; the parent stays as it was
 *   child-exit -> ends the child and reaps it */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int sym_tag(void);
int sym_tag_twice(void);
int weak_tag(void);
int cet_tag(void);
int page_tag(void);
int a_tag(void);
int b_tag(void);

static int (*dl_tag)(void);

static void answer(const char *who, const char *cmd)
{
    if (strcmp(cmd, "call") == 0) {
        printf("%ssym=%d sym_twice=%d weak=%d cet=%d page=%d a=%d b=%d\n", who, sym_tag(),
               sym_tag_twice(), weak_tag(), cet_tag(), page_tag(), a_tag(), b_tag());
    } else if (strncmp(cmd, "dlopen ", 7) == 0) {
        void *h = dlopen(cmd + 7, RTLD_NOW | RTLD_LOCAL);
        dl_tag = h ? (int (*)(void))dlsym(h, "dl_tag") : NULL;
        printf("%sdl %s\n", who, dl_tag ? "loaded" : dlerror());
    } else if (strcmp(cmd, "dl") == 0) {
        printf("%sdl=%d\n", who, dl_tag ? dl_tag() : -1);
    } else {
        printf("%sunknown command %s\n", who, cmd);
    }
}

int main(void)
{
    char line[4096];
    int child_pipe[2] = {-1, -1};
    pid_t child = -1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "fork") == 0) {
            if (pipe(child_pipe))
                return 2;
            fflush(stdout);
            child = fork();
            if (child == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(child_pipe[1]);
                FILE *in = fdopen(child_pipe[0], "r");
                printf("child pid=%d\n", (int)getpid());
                while (fgets(line, sizeof line, in)) {
                    line[strcspn(line, "\n")] = 0;
                    answer("child ", line);
                }
                _exit(0);
            }
            close(child_pipe[0]);
        } else if (strncmp(line, "child ", 6) == 0) {
            size_t n = strlen(line + 6);
            line[6 + n] = '\n';
            if (write(child_pipe[1], line + 6, n + 1) != (ssize_t)(n + 1))
                return 2;
        } else if (strcmp(line, "child-exit") == 0) {
            int status = 0;
            close(child_pipe[1]);
            waitpid(child, &status, 0);
            printf("child exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        } else {
            answer("", line);
        }
    }
    return 0;
}
