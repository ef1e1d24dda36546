/* The target library: parse_record() is exported, its helper
 * field_length() is static and has the bug (it lets a length run past the
 * buffer).  Built with the padding flags and prepared, like any target. */
#include <string.h>

/* noipa: keep it a real function that parse_record() calls directly (no
 * inlining, no clone such as field_length.constprop.0) */
__attribute__((noipa)) static int field_length(const char *field, int declared)
{
    (void)field;
    return declared;            /* the bug: trusts the declared length */
}

int parse_record(const char *field, int declared)
{
    return field_length(field, declared);
}
