/* Version VERSION (a -D flag: 2, 3, 4...) of lib_tag and lib_act
 * (tests/c/cm_step_lib.c).  Its calls into the library come from the patch
 * object: from outside the library. */
#define NAME(base) NAME_(base, VERSION)
#define NAME_(base, version) NAME__(base, version)
#define NAME__(base, version) base##_v##version

typedef void (*step_callback)(int *tags, int *n);
int lib_tag(void);

int NAME(lib_tag)(void)
{
    return VERSION;
}

int NAME(lib_act)(step_callback callback, int *tags, int *n)
{
    tags[(*n)++] = VERSION;
    tags[(*n)++] = lib_tag();
    callback(tags, n);
    tags[(*n)++] = lib_tag();
    return *n;
}
