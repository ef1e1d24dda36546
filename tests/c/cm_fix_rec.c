/* Patch for cm_lib.c: lib_rec version 2 (records '2', recurses through the
 * library's own lib_rec, i.e. through the tracker). */
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

int lib_rec(int depth, int max, int block_at, int fd, char *seen);

int lib_rec_v2(int depth, int max, int block_at, int fd, char *seen)
{
    seen[depth] = '2';
    if (depth == block_at) {
        char byte;
        if (write(1, "rec inside\n", 11) != 11)
            return -1;
        while (read(fd, &byte, 1) < 0 && errno == EINTR)
            ;
    }
    int below = depth < max ? lib_rec(depth + 1, max, block_at, fd, seen) : 0;
    return below + depth;
}
