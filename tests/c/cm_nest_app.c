/* Callbacks nested deeper than the tracker keeps anchors for (issue 7,
 * item 7: saturation).  "nest D" enters the library D times, each from the
 * program's callback; at the deepest level it prints "deepest" and waits
 * for a line (a patch is applied meanwhile), then enters the library once
 * more from there and unwinds.  It prints every version seen, outermost
 * level first.  "call" enters the library once from the loop. */
#include <stdio.h>
#include <string.h>

typedef void (*nest_callback)(int depth, int *tags, int *n);
int lib_tag(void);
int lib_nest(int depth, nest_callback callback, int *tags, int *n);

static void callback(int depth, int *tags, int *n)
{
    char line[16];
    if (depth > 0) {
        lib_nest(depth - 1, callback, tags, n);
        return;
    }
    printf("deepest\n");
    if (!fgets(line, sizeof line, stdin))
        return;
    tags[(*n)++] = lib_tag();
}

int main(void)
{
    char line[64];
    int depth;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "nest %d", &depth) == 1) {
            int tags[256], n = 0;
            lib_nest(depth, callback, tags, &n);
            printf("seen=");
            for (int i = 0; i < n; i++)
                printf("%d", tags[i]);
            printf("\n");
        } else if (strncmp(line, "call", 4) == 0) {
            printf("tag=%d\n", lib_tag());
        }
    }
    return 0;
}
