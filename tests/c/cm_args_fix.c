/* Case 11: the replacements (other formulas, same conventions). */
#include "cm_args.h"

double args_many_v2(ARGS_MANY_PARAMS)
{
    return ARGS_MANY_SUM(3) + 1;
}

double args_varargs_v2(const char *fmt, ...)
{
    ARGS_VARARGS_BODY(-2)
}

struct pair args_pair_v2(struct pair p, int k)
{
    struct pair r = {p.a * k - 1, p.b * k - 0.5};
    return r;
}

struct big args_big_v2(struct big in, double scale, int i7, int i8)
{
    struct big r;
    for (int i = 0; i < 6; i++)
        r.v[i] = in.v[i] * i8 + i7;
    for (int i = 0; i < 3; i++)
        r.d[i] = in.d[i] / scale;
    return r;
}
