/* The runtime's message log: what happened in this process, for `ulp messages`.
 *
 * WHAT IT HOLDS
 * The last ULP_LOG_RECORDS messages an operator wants to see: the runtime
 * loaded, the agent started or ended (or is off), a prepared library
 * registered or unloaded, a patch staged (loaded, still invisible), applied
 * or reverted (with the universe), a request refused (with the reason the
 * trigger was given).  Each record has a fixed size: a timestamp
 * (CLOCK_REALTIME), a kind (enum ulp_log_kind), the writing thread, an
 * address it is about (a library descriptor, for the reader to name), and
 * a short text.  runtime/ulp_log.h is the layout; the ring is a static
 * array, so the log costs no memory beyond it and never grows.
 *
 * HOW IT IS READ
 * From outside, through /proc/PID/mem (ulp/messages.py): no thread is
 * stopped, the agent is not asked, so it works on a process whose agent is
 * off, busy, or held by a debugger, and on one that is stuck.  The exported
 * header ulp_log gives the ring's address and sizes (with a magic and a
 * version: a reader checks them before it trusts anything else).
 *
 * HOW IT IS WRITTEN: no malloc, no lock, safe in a signal handler
 * A writer takes a ticket, one atomic fetch-and-add on ulp_log.tickets, and
 * the ticket picks its slot (ticket % ULP_LOG_RECORDS).  The slot's seq
 * says who owns it: 2t+1 while the writer of ticket t fills it, 2t+2 once
 * that writer is done.  The writer claims the slot with one compare-and-
 * swap from the value it saw to 2t+1, fills the record, and publishes it
 * by storing 2t+2 (release).  It never waits:
 *   - a slot whose seq is odd is being written by another writer: one that
 *     took a ticket ULP_LOG_RECORDS earlier and has not finished (preempted,
 *     or interrupted by the very signal handler now writing).  The new
 *     record is dropped and counted in ulp_log.dropped, rather than waiting
 *     for a writer that may be the interrupted thread itself (a deadlock);
 *   - a slot whose seq is already at or past 2t+1 holds a newer record (a
 *     writer that took its ticket later was faster): dropped likewise;
 *   - a failed compare-and-swap means another writer claimed the slot in
 *     between: dropped likewise.
 * The text is formatted by the small formatter below (%s %d %u %lu %ld %lx
 * %x %%), not by vsnprintf, which is not async-signal-safe; clock_gettime
 * and gettid are.  errno is kept.  No vector registers are used
 * (general-regs-only), so the writer could be called from the tracker's
 * paths, which save only the integer registers.  Today every record is
 * written by the constructor or the agent thread; registrations, which
 * happen on application threads at a function entry where no system call
 * may be made (a seccomp filter may forbid it), are noticed and logged by
 * the agent instead (ulp_log_libraries, at every tick and request): their
 * time is when the agent saw them, at most one idle tick (about a second) late.
 *
 * HOW A READER KNOWS A RECORD IS WHOLE
 * seq only grows, and a writer makes it odd before touching anything else
 * of the record.  A reader reads the ring three times (each a system call
 * apart: one copy's loads may happen in any order) and keeps the fields of
 * the middle copy only if seq is even, non-zero, the same in all three, and
 * names a ticket that maps to this slot: no writer touched it in between,
 * so its fields belong together (a seqlock read; x86 keeps stores in
 * order, and the release store orders them for the compiler).  Records older than tickets -
 * ULP_LOG_RECORDS were overwritten: the reader says how many. */
#pragma GCC target("general-regs-only")

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ulp_internal.h"
#include "ulp_log.h"

static struct ulp_log_record log_records[ULP_LOG_RECORDS];

ULP_EXPORT struct ulp_log_header ulp_log = {
    .magic = ULP_LOG_MAGIC,
    .version = ULP_LOG_VERSION,
    .nrecords = ULP_LOG_RECORDS,
    .record_size = sizeof(struct ulp_log_record),
    .text_size = ULP_LOG_TEXT,
    .records = (uint64_t)(uintptr_t)log_records,
};

/* --- a formatter that needs no lock and no memory ------------------------- */

struct text {
    char *at;
    char *end;      /* room for the NUL stays beyond it */
};

static void put_char(struct text *t, char c)
{
    if (t->at < t->end)
        *t->at++ = c;
}

static void put_string(struct text *t, const char *s)
{
    for (s = s ? s : "(null)"; *s; s++)
        put_char(t, (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

static void put_number(struct text *t, unsigned long value, unsigned base, int negative)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[value % base];
        value /= base;
    } while (value);
    if (negative)
        put_char(t, '-');
    while (n)
        put_char(t, digits[--n]);
}

static void put_signed(struct text *t, long value)
{
    put_number(t, value < 0 ? 0UL - (unsigned long)value : (unsigned long)value, 10, value < 0);
}

static void format(char *out, size_t size, const char *format, va_list args)
{
    struct text t = {out, out + size - 1};
    for (const char *f = format; *f; f++) {
        if (*f != '%') {
            put_char(&t, *f);
            continue;
        }
        int is_long = f[1] == 'l';
        f += 1 + is_long;
        switch (*f) {
        case 's':
            put_string(&t, va_arg(args, const char *));
            break;
        case 'd':
            put_signed(&t, is_long ? va_arg(args, long) : va_arg(args, int));
            break;
        case 'u':
            put_number(&t, is_long ? va_arg(args, unsigned long) : va_arg(args, unsigned), 10, 0);
            break;
        case 'x':
            put_number(&t, is_long ? va_arg(args, unsigned long) : va_arg(args, unsigned), 16, 0);
            break;
        case '%':
            put_char(&t, '%');
            break;
        default:    /* not a format this file uses: show it, consume nothing */
            put_char(&t, '%');
            if (!*f)
                f--;
            else
                put_char(&t, *f);
        }
    }
    *t.at = '\0';
}

/* --- the writer ------------------------------------------------------------ */

static void vlog(uint32_t kind, uint64_t address, const char *text_format, va_list args)
{
    int saved_errno = errno;
    uint64_t ticket = __atomic_fetch_add(&ulp_log.tickets, 1, __ATOMIC_RELAXED);
    struct ulp_log_record *r = &log_records[ticket % ULP_LOG_RECORDS];
    uint64_t seen = __atomic_load_n(&r->seq, __ATOMIC_ACQUIRE);
    if ((seen & 1) || seen >= 2 * ticket + 1 ||
        !__atomic_compare_exchange_n(&r->seq, &seen, 2 * ticket + 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&ulp_log.dropped, 1, __ATOMIC_RELAXED);
        errno = saved_errno;
        return;
    }
    struct timespec now = {0, 0};
    clock_gettime(CLOCK_REALTIME, &now);
    r->time_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    r->kind = kind;
    r->tid = (int32_t)syscall(SYS_gettid);
    r->address = address;
    format(r->text, sizeof r->text, text_format, args);
    __atomic_store_n(&r->seq, 2 * ticket + 2, __ATOMIC_RELEASE);
    errno = saved_errno;
}

ULP_HIDDEN void ulp_log_message(uint32_t kind, uint64_t address, const char *text_format, ...)
{
    va_list args;
    va_start(args, text_format);
    vlog(kind, address, text_format, args);
    va_end(args);
}

/* --- what the runtime logs, one call each from where it happens ----------- */

static void hex_prefix(const uint8_t *id, int bytes, char *out)
{
    for (int i = 0; i < bytes; i++) {
        out[2 * i] = "0123456789abcdef"[id[i] >> 4];
        out[2 * i + 1] = "0123456789abcdef"[id[i] & 15];
    }
    out[2 * bytes] = '\0';
}

/* The file name of the object holding LIB, cut at the front to fit SIZE. */
static void object_name(const struct ulp_lib_desc *lib, char *out, size_t size)
{
    Dl_info info;
    const char *name = dladdr(lib, &info) && info.dli_fname && *info.dli_fname
                           ? info.dli_fname : "(unknown object)";
    size_t length = 0;
    while (name[length])
        length++;
    struct text t = {out, out + size - 1};
    if (length > size - 1) {
        put_string(&t, "...");
        name += length - (size - 4);
    }
    put_string(&t, name);
    *t.at = '\0';
}

/* Libraries registered or unloaded since the last look (agent only: it
 * names them with dladdr, which takes the loader's lock).  Called by the
 * agent at every tick and before it logs a staged patch, both while the
 * application's threads run. */
ULP_HIDDEN void ulp_log_libraries(void)
{
    static struct ulp_lib_desc *seen[ULP_MAX_LIBS];
    static char names[ULP_MAX_LIBS][ULP_LOG_TEXT - 32];
    for (int slot = 0; slot < ULP_MAX_LIBS; slot++) {
        struct ulp_lib_desc *lib = ulp_library_in_slot(slot);
        if (lib == seen[slot])
            continue;
        if (seen[slot])
            ulp_log_message(ULP_LOG_LIBRARY, (uint64_t)(uintptr_t)seen[slot],
                            "library unloaded: %s", names[slot]);
        seen[slot] = lib;
        if (!lib)
            continue;
        object_name(lib, names[slot], sizeof names[slot]);
        ulp_log_message(ULP_LOG_LIBRARY, (uint64_t)(uintptr_t)lib,
                        "library registered: %s (slot %d)", names[slot], slot);
    }
}

/* A patch staged (NUMBER: its functions), applied or reverted (NUMBER: the
 * universe published). */
ULP_HIDDEN void ulp_log_patch(uint32_t kind, const uint8_t id[16], const char *label,
                              const struct ulp_lib_desc *lib, unsigned long number)
{
    char hex[33];
    /* A prepare may have registered the library just now: said first.  Only
     * then: naming a library takes the loader's lock (dladdr), and a commit
     * or revert must take no lock an application thread may hold, should it
     * ever run while they are stopped. */
    if (kind == ULP_LOG_STAGED)
        ulp_log_libraries();
    hex_prefix(id, 16, hex);
    const char *open = label && *label ? " (" : "", *close = label && *label ? ")" : "";
    uint64_t address = (uint64_t)(uintptr_t)lib;
    if (kind == ULP_LOG_STAGED)
        ulp_log_message(kind, address, "patch %s%s%s%s staged: %lu function(s)", hex, open,
                        label ? label : "", close, number);
    else
        ulp_log_message(kind, address, "patch %s%s%s%s %s in universe %lu", hex, open,
                        label ? label : "", close,
                        kind == ULP_LOG_APPLIED ? "applied" : "reverted", number);
}

/* A request answered with STATUS != ULP_OK: REASON is what the trigger was told. */
ULP_HIDDEN void ulp_log_refusal(const struct ulp_request *req, int status, const char *reason)
{
    static const char *const ops[] = {
        [ULP_OP_PREPARE] = "apply", [ULP_OP_COMMIT] = "commit", [ULP_OP_REVERT] = "revert",
        [ULP_OP_ABORT] = "abort", [ULP_OP_STATUS] = "status", [ULP_OP_STAGE] = "stage",
        [ULP_OP_LIST] = "list"};
    const char *op = req->op < sizeof ops / sizeof *ops && ops[req->op] ? ops[req->op]
                                                                          : "request";
    char hex[17];
    if (status == ULP_OK)
        return;
    hex_prefix(req->patch_id, 8, hex);
    ulp_log_message(ULP_LOG_REFUSED, (uint64_t)req->lib_desc, "%s of %s refused (%d): %s", op,
                    hex, status, reason);
}
