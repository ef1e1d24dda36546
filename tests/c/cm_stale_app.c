/* Stale words of the library's code on the stack (issue 7, item 5).
 *
 * "plant" leaves return addresses into the library's code in a buffer of
 * main's own frame, live for good, as a dead frame of an earlier call
 * leaves them in an uninitialised buffer; "clear" zeroes it.  "deep W"
 * plants the same word in a deeper frame's buffer (at the slot "shallow"
 * found for an entry from there, and in the W words on each side), and
 * enters the library, which overwrites that buffer and calls back into the
 * program.  It prints the versions the activation saw: one version,
 * whatever the stale words did.  "call" enters the library once from the
 * loop. */
#include <stdio.h>
#include <string.h>

typedef void (*step_callback)(int *tags, int *n);
int lib_tag(void);
void lib_where(unsigned long *slot, unsigned long *ret);
int lib_scribble(unsigned long *buffer, int words, step_callback callback, int *tags, int *n);
unsigned long lib_code_word(void);

#define BUFFER_WORDS 512

#define KEPT_WORDS 8

static unsigned long recorded_slot, stale_word;

static void callback(int *tags, int *n)
{
    tags[(*n)++] = lib_tag();
}

/* Deeper than the call in deep() below, so that its slot lies in deep's buffer. */
__attribute__((noipa)) static void shallow(void)
{
    volatile char depth[256];
    depth[0] = 0;
    unsigned long ret;
    lib_where(&recorded_slot, &ret);
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
        ((volatile unsigned long *)at)[i] = stale_word;
    int tags[8], n = 0;
    lib_scribble(buffer, BUFFER_WORDS, callback, tags, &n);
    printf("seen=");
    for (int i = 0; i < n; i++)
        printf("%d", tags[i]);
    printf("\n");
}

int main(void)
{
    volatile unsigned long kept[KEPT_WORDS] = {0};
    char line[64];
    int around;
    stale_word = lib_code_word();
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "shallow", 7) == 0) {
            shallow();
            printf("recorded\n");
        } else if (strncmp(line, "plant", 5) == 0) {
            for (int i = 0; i < KEPT_WORDS; i++)
                kept[i] = stale_word;
            printf("planted\n");
        } else if (strncmp(line, "clear", 5) == 0) {
            for (int i = 0; i < KEPT_WORDS; i++)
                kept[i] = 0;
            printf("cleared\n");
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
