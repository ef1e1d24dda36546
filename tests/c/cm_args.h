/* Case 11 of the consistency tests: argument and return conventions.
 * cm_args_lib.c defines the originals, cm_args_fix.c the replacements
 * (same signatures, other formulas, names with _v2). */
#include <stdarg.h>

struct pair {
    long a;
    double b;
};

struct big {
    long v[6];
    double d[3];
};

#define ARGS_MANY_PARAMS                                                                   \
    int i1, int i2, int i3, int i4, int i5, int i6, int i7, int i8, int i9, int i10,          \
        double d1, double d2, double d3, double d4, double d5, double d6, double d7,          \
        double d8, double d9, double d10, float f11, long l12
#define ARGS_MANY_SUM(w)                                                                   \
    (i1 * 1.0 + i2 * 2.0 + i3 * 3.0 + i4 * 4.0 + i5 * 5.0 + i6 * 6.0 + i7 * 7.0 + i8 * 8.0 + \
     i9 * 9.0 + i10 * 10.0 + d1 * 11 + d2 * 12 + d3 * 13 + d4 * 14 + d5 * 15 + d6 * 16 +      \
     d7 * 17 + d8 * 18 + d9 * 19 + d10 * 20 + f11 * 21 + l12 * 22) * (w)

/* fmt: one letter per variadic argument: i int, l long, d double */
#define ARGS_VARARGS_BODY(w)                                                               \
    va_list ap;                                                                            \
    double sum = 0;                                                                        \
    int k = 1;                                                                             \
    va_start(ap, fmt);                                                                     \
    for (const char *p = fmt; *p; p++, k++) {                                              \
        if (*p == 'i')                                                                     \
            sum += k * (double)va_arg(ap, int);                                            \
        else if (*p == 'l')                                                                \
            sum += k * (double)va_arg(ap, long);                                           \
        else                                                                               \
            sum += k * va_arg(ap, double);                                                 \
    }                                                                                      \
    va_end(ap);                                                                            \
    return sum * (w);
