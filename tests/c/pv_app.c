/* The target program of the provenance tests.  Commands, one per line on
 * stdin, each answered with one line:
 *   call      "value=N": what pv_value returns now
 *   objects   the names of the loaded objects (dl_iterate_phdr, as a
 *             debugger reads them from the link map), separated by '|'
 *   dlfd PATH open PATH, dlopen it as /proc/self/fd/N, close N: "dlfd N"
 *             (an object now carries a name the next descriptor N gets) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int pv_value(void);

static int print_name(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    printf("%s|", info->dlpi_name);
    return 0;
}

int main(void)
{
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    pv_value();     /* the library registers with the runtime now */
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "call", 4) == 0) {
            printf("value=%d\n", pv_value());
        } else if (strncmp(line, "objects", 7) == 0) {
            dl_iterate_phdr(print_name, NULL);
            printf("\n");
        } else if (strncmp(line, "dlfd ", 5) == 0) {
            char name[64];
            line[strcspn(line, "\n")] = '\0';
            int fd = open(line + 5, O_RDONLY | O_CLOEXEC);
            snprintf(name, sizeof name, "/proc/self/fd/%d", fd);
            void *handle = fd >= 0 ? dlopen(name, RTLD_NOW | RTLD_LOCAL) : NULL;
            if (fd >= 0)
                close(fd);
            printf(handle ? "dlfd %d\n" : "dlfd failed %d\n", fd);
        } else {
            printf("unknown command\n");
        }
    }
    return 0;
}
