/* Prints what prep_lib.c computes, so that runs can be compared byte for byte. */
#include <stdio.h>

extern int prep_calls;
int add(int, int);
int plus(int, int);
int sum2(int, int);
double scale(double, double);
long sum8(long, long, long, long, long, long, long, long);
int add_twice(int, int);
int weak_answer(void);
int (*get_add(void))(int, int);
void greet(const char *);

int main(void)
{
    printf("add %d plus %d sum2 %d\n", add(2, 3), plus(-4, 9), sum2(100, 1));
    printf("scale %.6f\n", scale(1.25, -3.5));
    printf("sum8 %ld\n", sum8(1, 2, 3, 4, 5, 6, 7, 8));
    printf("add_twice %d\n", add_twice(7, 11));
    printf("weak_answer %d\n", weak_answer());
    printf("same pointer %d, call through it %d\n", get_add() == add, get_add()(20, 22));
    greet("prepared world");
    printf("calls %d\n", prep_calls);
    return 0;
}
