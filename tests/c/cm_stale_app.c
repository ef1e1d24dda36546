/* Stale return addresses on the stack (issue 7, item 5).
 *
 * "shallow" enters the library once from a frame: the tracker records the
 * slot of that call's return address and its value.  After a patch is
 * applied, "deep W" calls from a deeper frame whose uninitialised buffer
 * still holds that value at that slot (planted here, as a dead frame leaves
 * it; W > 0 also plants it in the W words on each side), and enters the
 * library, which overwrites the buffer and calls back into the program.
 * It prints the versions the activation saw: one version, whatever the
 * stale word did.  "call" enters the library once from the loop. */
#include <stdio.h>
#include <string.h>

typedef void (*step_callback)(int *tags, int *n);
int lib_tag(void);
void lib_where(unsigned long *slot, unsigned long *ret);
int lib_scribble(unsigned long *buffer, int words, step_callback callback, int *tags, int *n);

#define BUFFER_WORDS 512

static unsigned long recorded_slot, recorded_ret;

static void callback(int *tags, int *n)
{
    tags[(*n)++] = lib_tag();
}

/* Deeper than the call in deep() below, so that its slot lies in deep's buffer. */
__attribute__((noipa)) static void shallow(void)
{
    volatile char depth[256];
    depth[0] = 0;
    lib_where(&recorded_slot, &recorded_ret);
    (void)depth[0];
}

__attribute__((noipa)) static void deep(int around)
{
    unsigned long buffer[BUFFER_WORDS];
    unsigned long *at = (unsigned long *)recorded_slot;
    if (at - around < buffer || at + around >= buffer + BUFFER_WORDS) {
        printf("layout: the slot is not in the buffer\n");
        return;
    }
    for (int i = -around; i <= around; i++)
        ((volatile unsigned long *)at)[i] = recorded_ret;
    int tags[8], n = 0;
    lib_scribble(buffer, BUFFER_WORDS, callback, tags, &n);
    printf("seen=");
    for (int i = 0; i < n; i++)
        printf("%d", tags[i]);
    printf("\n");
}

int main(void)
{
    char line[64];
    int around;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "shallow", 7) == 0) {
            shallow();
            printf("recorded\n");
        } else if (sscanf(line, "deep %d", &around) == 1) {
            deep(around);
        } else if (strncmp(line, "call", 4) == 0) {
            printf("tag=%d\n", lib_tag());
        } else {
            printf("unknown command\n");
        }
    }
    return 0;
}
