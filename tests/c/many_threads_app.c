/* argv[1] threads that wait in read() on a pipe nobody writes, and one
 * that runs a loop of the library; "call" on stdin -> the library's value. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int lib_value(void);

static int never[2];
static volatile int spinning;

static void *wait_forever(void *unused)
{
    char byte;
    (void)unused;
    while (read(never[0], &byte, 1) != 0)
        ;
    return NULL;
}

static void *spin(void *unused)
{
    (void)unused;
    for (;;) {
        lib_value();
        spinning = 1;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char line[64];
    int threads = argc > 1 ? atoi(argv[1]) : 32;
    pthread_t thread;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe(never) != 0)
        return 1;
    for (int i = 0; i < threads; i++)
        pthread_create(&thread, NULL, wait_forever, NULL);
    pthread_create(&thread, NULL, spin, NULL);
    while (!spinning)
        ;
    printf("ready\n");
    while (fgets(line, sizeof line, stdin))
        if (strncmp(line, "call", 4) == 0)
            printf("value=%d\n", lib_value());
    return 0;
}
