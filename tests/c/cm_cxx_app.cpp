// Case 9/10: C++ program (linked with -rdynamic) driving cm_cxx_lib.cpp.
//   tag     -> "tag=N"
//   throw   -> the library throws, main catches: "caught MESSAGE"
//   cross   -> a callback of the program throws through the library: "crossed ..."
//   bt      -> backtrace taken inside the library, called via bt_outer/bt_inner
//   block   -> starts blocker_main, which blocks inside cxx_block
//   unblock -> lets it return normally; cancel -> pthread_cancel + join
#include <cstdio>
#include <cstring>
#include <pthread.h>
#include <stdexcept>
#include <string>
#include <unistd.h>

extern "C" {
int cxx_tag(void);
int cxx_throw(int x);
int cxx_block(int fd, int *cleanup_ran, int *dtor_ran);
int cxx_backtrace(char *out, size_t size);
int cxx_call(int (*cb)(int));
}

static int release_pipe[2];
static pthread_t blocker;
static int app_cleanup_ran, lib_cleanup_ran, lib_dtor_ran, block_result;

static void app_cleanup(void *) { app_cleanup_ran = 1; }

extern "C" void *blocker_main(void *)
{
    pthread_cleanup_push(app_cleanup, nullptr);
    block_result = cxx_block(release_pipe[0], &lib_cleanup_ran, &lib_dtor_ran);
    pthread_cleanup_pop(0);
    return nullptr;
}

struct Crossing {
    int seen;
};

static int throwing_callback(int seen)
{
    throw Crossing{seen * 10 + cxx_tag()};
}

extern "C" __attribute__((noinline)) void bt_inner(char *out, size_t size)
{
    cxx_backtrace(out, size);
    __asm__ volatile("" ::: "memory");
}

extern "C" __attribute__((noinline)) void bt_outer(char *out, size_t size)
{
    bt_inner(out, size);
    __asm__ volatile("" ::: "memory");
}

int main()
{
    char line[64];
    setvbuf(stdout, nullptr, _IOLBF, 0);
    if (pipe(release_pipe))
        return 2;
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "tag") == 0) {
            printf("tag=%d\n", cxx_tag());
        } else if (strcmp(line, "throw") == 0) {
            try {
                cxx_throw(-7);
                printf("not thrown\n");
            } catch (const std::runtime_error &e) {
                printf("caught %s\n", e.what());
            }
        } else if (strcmp(line, "cross") == 0) {
            try {
                cxx_call(throwing_callback);
                printf("not thrown\n");
            } catch (const Crossing &c) {
                printf("crossed seen=%d\n", c.seen);
            }
        } else if (strcmp(line, "bt") == 0) {
            static char out[16384];
            bt_outer(out, sizeof out);
            printf("bt %s\n", out);
        } else if (strcmp(line, "block") == 0) {
            app_cleanup_ran = lib_cleanup_ran = lib_dtor_ran = block_result = 0;
            pthread_create(&blocker, nullptr, blocker_main, nullptr);
        } else if (strcmp(line, "unblock") == 0 || strcmp(line, "cancel") == 0) {
            void *result = nullptr;
            if (line[0] == 'c')
                pthread_cancel(blocker);
            else if (write(release_pipe[1], "x", 1) != 1)
                return 2;
            pthread_join(blocker, &result);
            printf("joined canceled=%d app_cleanup=%d lib_cleanup=%d lib_dtor=%d result=%d\n",
                   result == PTHREAD_CANCELED, app_cleanup_ran, lib_cleanup_ran, lib_dtor_ran,
                   block_result);
        } else {
            printf("unknown command %s\n", line);
        }
    }
    return 0;
}
