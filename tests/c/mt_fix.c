/* Version 2 of both libraries of tests/c/mt_lib[ab].c, in one patch object.
 * Its calls into the libraries come from the patch object: from outside. */
typedef void (*mt_callback)(int *tags, int *n);
int a_tag(void);
int b_tag(void);

int a_tag_v2(void)
{
    return 2;
}

int a_act_v2(mt_callback callback, int *tags, int *n)
{
    tags[(*n)++] = 2;
    callback(tags, n);
    tags[(*n)++] = a_tag();
    return *n;
}

int b_tag_v2(void)
{
    return 2;
}

int b_act_v2(mt_callback callback, int *tags, int *n)
{
    tags[(*n)++] = 2;
    callback(tags, n);
    tags[(*n)++] = b_tag();
    return *n;
}

int c_tag_v2(void)
{
    return 2;
}

/* B's static b_step, through a reference to B's static b_total. */
int *b_total_ref;

int b_step_v2(void)
{
    return *b_total_ref += 10;
}
