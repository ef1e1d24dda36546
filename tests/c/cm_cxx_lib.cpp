// Case 9/10 of the consistency tests: a C++ library (prepared) whose
// functions throw, block in a cancellation point, take a backtrace and call
// back into the program.  Version tag 1; the patch cm_cxx_fix.cpp says 2.
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

int cxx_tag(void) { return 1; }

int cxx_throw(int x)
{
    if (x < 0)
        throw std::runtime_error("v1 " + std::to_string(x));
    return 1;
}

// Blocks in read() (a cancellation point) inside the library, with a
// cleanup handler and a destructor of its own.
int cxx_block(int fd, int *cleanup_ran, int *dtor_ran)
{
    Guard guard{dtor_ran};
    char byte = 0;
    pthread_cleanup_push(set_flag, cleanup_ran);
    if (write(1, "block1 inside\n", 14) != 14)
        abort();
    while (read(fd, &byte, 1) < 0 && errno == EINTR)
        ;
    pthread_cleanup_pop(0);
    return 1;
}

// The frames above this one, as backtrace_symbols prints them.
int cxx_backtrace(char *out, size_t size)
{
    void *frames[64];
    int n = backtrace(frames, 64);
    char **names = backtrace_symbols(frames, n);
    snprintf(out, size, "v1");
    for (int i = 0; i < n && names; i++) {
        size_t used = strlen(out);
        snprintf(out + used, size - used, " %s", names[i]);
    }
    free(names);
    return n;
}

// Calls back into the program, which may throw through this frame.
int cxx_call(int (*cb)(int))
{
    std::string keep("a destructor to run while unwinding");
    return cb(cxx_tag()) + static_cast<int>(keep.size()) * 0;
}
}
