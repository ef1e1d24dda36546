/* Loads ./libplugin.so (argv[1]) with RTLD_LOCAL and prints
 * "plugin_run=<its result>". */
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    int (*run)(void) = dlsym(h, "plugin_run");
    printf("plugin_run=%d\n", run());
    return 0;
}
