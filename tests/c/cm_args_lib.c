/* Case 11: the original functions (see cm_args.h). */
#include "cm_args.h"

double args_many(ARGS_MANY_PARAMS)
{
    return ARGS_MANY_SUM(1);
}

double args_varargs(const char *fmt, ...)
{
    ARGS_VARARGS_BODY(1)
}

struct pair args_pair(struct pair p, int k)
{
    struct pair r = {p.a * k + 1, p.b * k + 0.5};
    return r;
}

struct big args_big(struct big in, double scale, int i7, int i8)
{
    struct big r;
    for (int i = 0; i < 6; i++)
        r.v[i] = in.v[5 - i] * i7 + i8;
    for (int i = 0; i < 3; i++)
        r.d[i] = in.d[2 - i] * scale;
    return r;
}
