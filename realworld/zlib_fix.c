/* Live fix for zlib 1.2.13 (Debian 1:1.2.13.dfsg-1): inflateSync() and the
 * data held in the bit buffer.
 *
 * Upstream fix: "Fix bug in inflateSync() for data held in bit buffer",
 * madler/zlib commit 5af7cef45eeef86ddf6ab00b4e363c1eecaf47b6 (2023-08-24),
 * released in zlib 1.3.1.  On its first call inflateSync() turns the whole
 * bytes still in the bit buffer back into a byte string to search for the
 * 00 00 ff ff marker, after dropping the bits of a partly used byte: those
 * are the low bits of `hold`, but 1.2.13 shifts left instead of right, so
 * the bytes it searches are wrong and a marker that starts in the bit
 * buffer is missed (or a false one found).
 *
 * The real fix changed inflateSync() itself, an exported function: so does
 * this one.  It is inflateSync() of 1.2.13 with the one-character change of
 * the upstream commit, marked FIX, built against the library's own headers
 * (inflate.h) of the same source tree, as a maintainer builds a fix.  It
 * calls the library's inflateReset(), as the original does; the two static
 * helpers it needs, inflateStateCheck() and syncsearch(), exist in the -O3
 * build only inlined into their callers, so the fix carries them unchanged.
 */
#include "zutil.h"
#include "inftrees.h"
#include "inflate.h"

static int state_check(z_streamp strm)
{
    struct inflate_state FAR *state;
    if (strm == Z_NULL || strm->zalloc == (alloc_func)0 || strm->zfree == (free_func)0)
        return 1;
    state = (struct inflate_state FAR *)strm->state;
    if (state == Z_NULL || state->strm != strm || state->mode < HEAD || state->mode > SYNC)
        return 1;
    return 0;
}

static unsigned sync_search(unsigned FAR *have, const unsigned char FAR *buf, unsigned len)
{
    unsigned got = *have, next = 0;
    while (next < len && got < 4) {
        if ((int)(buf[next]) == (got < 2 ? 0 : 0xff))
            got++;
        else if (buf[next])
            got = 0;
        else
            got = 4 - got;
        next++;
    }
    *have = got;
    return next;
}

int inflateSync_fixed(z_streamp strm)
{
    unsigned len;
    int flags;
    unsigned long in, out;
    unsigned char buf[4];
    struct inflate_state FAR *state;

    if (state_check(strm))
        return Z_STREAM_ERROR;
    state = (struct inflate_state FAR *)strm->state;
    if (strm->avail_in == 0 && state->bits < 8)
        return Z_BUF_ERROR;

    if (state->mode != SYNC) {
        state->mode = SYNC;
        state->hold >>= state->bits & 7; /* FIX (5af7cef): was <<= */
        state->bits -= state->bits & 7;
        len = 0;
        while (state->bits >= 8) {
            buf[len++] = (unsigned char)(state->hold);
            state->hold >>= 8;
            state->bits -= 8;
        }
        state->have = 0;
        sync_search(&(state->have), buf, len);
    }

    len = sync_search(&(state->have), strm->next_in, strm->avail_in);
    strm->avail_in -= len;
    strm->next_in += len;
    strm->total_in += len;

    if (state->have != 4)
        return Z_DATA_ERROR;
    if (state->flags == -1)
        state->wrap = 0;
    else
        state->wrap &= ~4;
    flags = state->flags;
    in = strm->total_in;
    out = strm->total_out;
    inflateReset(strm);
    strm->total_in = in;
    strm->total_out = out;
    state->flags = flags;
    state->mode = TYPE;
    return Z_OK;
}
