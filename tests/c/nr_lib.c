/* A function that ends with a call that never returns, then the next
 * function laid right after it (built with -falign-functions=1): the word
 * of __patchable_function_entries for nr_value points just past that call,
 * where a return address would point. */
#include <stdlib.h>

void nr_fail(void)
{
    abort();
}

int nr_value(void)
{
    return 1;
}
