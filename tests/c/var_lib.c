/* Globals of every kind `ulp var` reads and writes, and a function that
 * shows them (tests/test_var.py). */
#include <stdio.h>

int counter = 7;
unsigned char flag = 1;
short small = -2;
long long big = -5;
unsigned long long huge = 18446744073709551615ULL;
float weight = 1.25f;
double ratio = 0.5;
char name[16] = "alpha";
const int limit = 5;
char pad[3 * 4096 + 100];      /* .bss: from the file's last page into the anonymous mapping */
static volatile int hidden = 3;   /* volatile: kept, read at each show */
__thread int per_thread = 1;

int var_function(void)
{
    return hidden + per_thread;
}

void var_show(char *out, int size)
{
    snprintf(out, size, "counter=%d flag=%u small=%d big=%lld huge=%llu weight=%g ratio=%g "
             "name=%s hidden=%d", counter, flag, small, big, huge, weight, ratio, name, hidden);
}
