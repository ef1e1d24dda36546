/* Patch for cm_combo.c: every function says 2. */
int combo_a_v2(void)
{
    return 2;
}

int combo_b_v2(void)
{
    return 2;
}

int combo_c_v2(void)
{
    return 2;
}
