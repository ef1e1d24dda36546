// Patch for cm_cxx_lib.cpp: version 2 of each function.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <execinfo.h>
#include <pthread.h>
#include <stdexcept>
#include <stdlib.h>
#include <string>
#include <unistd.h>

namespace {
struct Guard {
    int *flag;
    ~Guard() { *flag = 1; }
};

void set_flag(void *flag) { *static_cast<int *>(flag) = 1; }
}  // namespace

extern "C" {

int cxx_tag_v2(void) { return 2; }

int cxx_throw_v2(int x)
{
    if (x < 0)
        throw std::runtime_error("v2 " + std::to_string(x));
    return 2;
}

int cxx_block_v2(int fd, int *cleanup_ran, int *dtor_ran)
{
    Guard guard{dtor_ran};
    char byte = 0;
    pthread_cleanup_push(set_flag, cleanup_ran);
    if (write(1, "block2 inside\n", 14) != 14)
        abort();
    while (read(fd, &byte, 1) < 0 && errno == EINTR)
        ;
    pthread_cleanup_pop(0);
    return 2;
}

int cxx_backtrace_v2(char *out, size_t size)
{
    void *frames[64];
    int n = backtrace(frames, 64);
    char **names = backtrace_symbols(frames, n);
    snprintf(out, size, "v2");
    for (int i = 0; i < n && names; i++) {
        size_t used = strlen(out);
        snprintf(out + used, size - used, " %s", names[i]);
    }
    free(names);
    return n;
}
}
