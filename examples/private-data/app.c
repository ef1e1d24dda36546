/* Each "add" line adds 1 on the main thread; each "thread" line adds 1 on
 * a new thread.  Both print the total and that thread's own call count. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

long add(long amount);
long thread_calls(void);

static void *one_add(void *unused)
{
    (void)unused;
    long total = add(1);
    printf("thread total=%ld calls=%ld\n", total, thread_calls());
    return NULL;
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "thread", 6) == 0) {
            pthread_t thread;
            pthread_create(&thread, NULL, one_add, NULL);
            pthread_join(thread, NULL);
            continue;
        }
        long total = add(1);
        printf("main total=%ld calls=%ld\n", total, thread_calls());
    }
    return 0;
}
