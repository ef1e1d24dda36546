// A program using libgeo.so.  The rectangle is created once, at start, so
// after the patch it still has the vtable it was built with.  Each line read
// on stdin prints one line:
//   call -> the results, and the address in the rectangle's vtable slot for
//           area() (the same before and after the patch)
#include <cstdio>
#include <cstring>

#include "geo.h"

int main()
{
    const geo::Shape *rect = new geo::Rect(3, 4);
    const geo::Shape *shapes[] = {rect, rect};
    char line[64];

    setvbuf(stdout, nullptr, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "call", 4) != 0) {
            printf("unknown command\n");
            continue;
        }
        void *const *vtable = *reinterpret_cast<void *const *const *>(rect);
        printf("area=%g perimeter=%g clamp=%d,%d total=%g version=%d slot=%p\n", rect->area(),
               static_cast<const geo::Rect *>(rect)->perimeter(), geo::clamp(100, 0, 100),
               geo::clamp(150), geo::total_area(shapes, 2), geo_version(), vtable[2]);
    }
    return 0;
}
