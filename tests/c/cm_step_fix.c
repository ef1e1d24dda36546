/* Version 2 of lib_tag and lib_act (tests/c/cm_step_lib.c).  Its calls
 * into the library come from the patch object: from outside the library. */
typedef void (*step_callback)(int *tags, int *n);
int lib_tag(void);

int lib_tag_v2(void)
{
    return 2;
}

int lib_act_v2(step_callback callback, int *tags, int *n)
{
    tags[(*n)++] = 2;
    tags[(*n)++] = lib_tag();
    callback(tags, n);
    tags[(*n)++] = lib_tag();
    return *n;
}
