/* Version 3 of lib_tag and lib_act (tests/c/cm_step_lib.c).  Its calls
 * into the library come from the patch object: from outside the library. */
typedef void (*step_callback)(int *tags, int *n);
int lib_tag(void);

int lib_tag_v3(void)
{
    return 3;
}

int lib_act_v3(step_callback callback, int *tags, int *n)
{
    tags[(*n)++] = 3;
    tags[(*n)++] = lib_tag();
    callback(tags, n);
    tags[(*n)++] = lib_tag();
    return *n;
}
