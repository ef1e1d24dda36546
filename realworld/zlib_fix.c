/* Live fix for zlib 1.2.13 (Debian 1:1.2.13.dfsg-1): deflateBound() for
 * level 0 and memLevel 9.
 *
 * Upstream fix: "Fix bug in deflateBound() for level 0 and memLevel 9",
 * madler/zlib commit e554695638228b846d49657f31eeff0ca4680e8a (2022-12-15),
 * released in zlib 1.3 (ChangeLog: "Fix bug in deflateBound() for level 0
 * and memLevel 9").  memLevel 9 made deflateBound() assume fixed blocks
 * even at level 0, which only writes stored blocks: for small inputs the
 * bound is then smaller than the compressed data, and a caller that sizes
 * its output buffer with deflateBound() cannot finish the stream in one
 * call.
 *
 * Built against the library's own headers (deflate.h) of the same source
 * tree, as a maintainer builds a fix.  The body is deflateBound() of 1.2.13
 * with the one-line change of the upstream commit, marked FIX.
 */
#include "deflate.h"

/* deflate.c's private deflateStateCheck(), unchanged: 1.2.13 declares it
 * `local` (static), so the fix carries the same few lines. */
static int state_check(z_streamp strm)
{
    deflate_state *s;
    if (strm == Z_NULL || strm->zalloc == (alloc_func)0 || strm->zfree == (free_func)0)
        return 1;
    s = strm->state;
    if (s == Z_NULL || s->strm != strm || (s->status != INIT_STATE &&
#ifdef GZIP
                                           s->status != GZIP_STATE &&
#endif
                                           s->status != EXTRA_STATE &&
                                           s->status != NAME_STATE &&
                                           s->status != COMMENT_STATE &&
                                           s->status != HCRC_STATE &&
                                           s->status != BUSY_STATE &&
                                           s->status != FINISH_STATE))
        return 1;
    return 0;
}

uLong deflateBound_fixed(z_streamp strm, uLong sourceLen)
{
    deflate_state *s;
    uLong fixedlen, storelen, wraplen;

    fixedlen = sourceLen + (sourceLen >> 3) + (sourceLen >> 8) +
               (sourceLen >> 9) + 4;
    storelen = sourceLen + (sourceLen >> 5) + (sourceLen >> 7) +
               (sourceLen >> 11) + 7;

    if (state_check(strm))
        return (fixedlen > storelen ? fixedlen : storelen) + 6;

    s = strm->state;
    switch (s->wrap) {
    case 0:
        wraplen = 0;
        break;
    case 1:
        wraplen = 6 + (s->strstart ? 4 : 0);
        break;
#ifdef GZIP
    case 2:
        wraplen = 18;
        if (s->gzhead != Z_NULL) {
            Bytef *str;
            if (s->gzhead->extra != Z_NULL)
                wraplen += 2 + s->gzhead->extra_len;
            str = s->gzhead->name;
            if (str != Z_NULL)
                do {
                    wraplen++;
                } while (*str++);
            str = s->gzhead->comment;
            if (str != Z_NULL)
                do {
                    wraplen++;
                } while (*str++);
            if (s->gzhead->hcrc)
                wraplen += 2;
        }
        break;
#endif
    default:
        wraplen = 6;
    }

    if (s->w_bits != 15 || s->hash_bits != 8 + 7)
        /* FIX (e554695): level 0 always uses the stored-blocks bound */
        return (s->w_bits <= s->hash_bits && s->level ? fixedlen : storelen) +
               wraplen;

    return sourceLen + (sourceLen >> 12) + (sourceLen >> 14) +
           (sourceLen >> 25) + 13 - 6 + wraplen;
}
