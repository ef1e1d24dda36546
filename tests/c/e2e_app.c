/* Answers one line per command read on stdin, so tests need no sleeps:
 *   call     -> the library's results
 *   entries  -> for each exported function, whether calling it once from
 *               here made the runtime record an external entry (1) or not */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int lib_value(void);
int lib_twice(int x);
int lib_value_plus(int x);
double lib_half(double x);

static void count_entries(void)
{
    uint64_t (*entries)(void) = (uint64_t(*)(void))dlsym(RTLD_DEFAULT,
                                                          "ulp_thread_entry_signature");
    if (!entries) {
        printf("no runtime\n");
        return;
    }
    uint64_t e0 = entries();
    lib_value();
    uint64_t e1 = entries();
    lib_twice(1);
    uint64_t e2 = entries();
    lib_value_plus(1);
    uint64_t e3 = entries();
    lib_half(1.0);
    uint64_t e4 = entries();
    printf("lib_value=%d lib_twice=%d lib_value_plus=%d lib_half=%d\n", e1 != e0, e2 != e1,
           e3 != e2, e4 != e3);
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "call", 4) == 0)
            printf("value=%d twice=%d plus=%d half=%g\n", lib_value(), lib_twice(21),
                   lib_value_plus(1), lib_half(5.0));
        else if (strncmp(line, "entries", 7) == 0)
            count_entries();
        else
            printf("unknown command\n");
    }
    return 0;
}
