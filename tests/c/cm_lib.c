/* The target library of the consistency-model tests (tests/test_consistency.py).
 * Every function returns or records a version tag: the original code says 1
 * (lib_value: 100, lib_other: 1000), each patch its own number.  Functions
 * that must stay "inside L" for a while block in L itself: they announce
 * "LABEL inside" on fd 1 with write() and wait for one byte on a pipe. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int lib_tag(void)
{
    return 1;
}

int lib_value(void)
{
    return 100;
}

int lib_other(void)
{
    return 1000;
}

/* A nested entry of L: calls lib_tag through the PLT. */
int lib_tag_nested(void)
{
    return lib_tag();
}

static void hold(const char *label, int fd)
{
    char line[64], byte;
    int n = snprintf(line, sizeof line, "%s inside\n", label);
    if (write(1, line, (size_t)n) != n)
        return;
    while (read(fd, &byte, 1) < 0 && errno == EINTR)
        ;
}

/* Case 5/6: tag before blocking, block inside L, tag after: before*10+after. */
int lib_hold(int fd)
{
    int before = lib_tag();
    hold("hold", fd);
    int after = lib_tag();
    return before * 10 + after;
}

/* Case 1: never leaves L until lib_spin_stop() is called from outside. */
static volatile int spin_stop;
static volatile long spin_iterations;

int lib_spin(void)
{
    int seen = 0;
    while (!__atomic_load_n(&spin_stop, __ATOMIC_ACQUIRE)) {
        seen |= 1 << lib_tag();
        __atomic_add_fetch(&spin_iterations, 1, __ATOMIC_RELEASE);
    }
    return seen;
}

void lib_spin_stop(void)
{
    __atomic_store_n(&spin_stop, 1, __ATOMIC_RELEASE);
}

long lib_spin_iterations(void)
{
    return __atomic_load_n(&spin_iterations, __ATOMIC_ACQUIRE);
}

/* Case 4: a qsort-style sort inside L.  Between comparisons it calls lib_tag
 * (nested) and records what it saw in seen[]; the comparator is the
 * program's. */
int lib_sort(int *a, int n, int (*cmp)(const int *, const int *), int *seen)
{
    int k = 0;
    seen[k++] = lib_tag();
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && cmp(&a[j - 1], &a[j]) > 0; j--) {
            int t = a[j];
            a[j] = a[j - 1];
            a[j - 1] = t;
            seen[k++] = lib_tag();
        }
    seen[k++] = lib_tag();
    return k;
}

/* Reached only through a pointer, never through a trampoline or a patched
 * entry: an activation the library's descriptors never see begin. */
__attribute__((noipa)) static int through_pointer(int (*cb)(void))
{
    int before = lib_tag();
    int r = cb();
    return before * 100 + r * 10 + lib_tag();
}

typedef int (*pointer_entry)(int (*cb)(void));

pointer_entry lib_pointer_entry(void)
{
    return through_pointer;
}

/* Case 10: calls a callback of the program (which may longjmp or throw). */
int lib_call(int (*cb)(void))
{
    int before = lib_tag();
    int r = cb();
    return before * 100 + r * 10 + lib_tag();
}

/* Case 8: recursion.  Every level records its version tag in seen[depth];
 * the level block_at blocks inside L before going deeper. */
int lib_rec(int depth, int max, int block_at, int fd, char *seen)
{
    seen[depth] = '1';
    if (depth == block_at)
        hold("rec", fd);
    int below = depth < max ? lib_rec(depth + 1, max, block_at, fd, seen) : 0;
    return below + depth;
}
