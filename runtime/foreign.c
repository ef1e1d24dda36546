/* Unnoted stacks: activations suspended where the runtime was told of no
 * stack.
 *
 * A commit judges the threads by their stacks (transition.c) and the
 * coroutine stacks it knows of by theirs (coroutine.c).  A program that
 * switches stacks by its own means (boost.context's make_fcontext, a
 * hand-written switch, a language runtime) and does not note them
 * (ulp_note_stack) can leave an activation of a library suspended on a
 * stack the commit sees on no thread: resumed after the commit, it would
 * make its nested calls in the new universe.
 *
 * Such an activation leaves at least one return address into prepared code
 * where it waits: it called out of the library (a callback, the switch
 * itself), and its frame keeps the address the call returns to; or, if a
 * signal interrupted it and the handler switched away, the interrupted
 * %rip in the signal frame.  So a commit searches every other writable
 * mapping of the process, while every thread is stopped, for a word that
 * is a return address into prepared code (an address just past a call
 * instruction of a library, a patch object or the tracker) or a signal
 * frame's %rip there.  Found, the commit changes nothing and answers
 * COROUTINES (exit 15, RETRY), naming where: the activation cannot be put
 * in a universe, so the commit waits for it to end.  A delay, never a mix.
 * A stopped thread that runs prepared code on such a stack holds the
 * commit back the same way: its activation may not have called out yet
 * (no word anywhere), and a signal's handler may switch away from it.
 *
 * Not searched: the threads' own stacks and the noted coroutine stacks
 * (judged by their rules), glibc's thread stacks (live or kept for reuse:
 * recognised by the thread control block glibc puts at their top, whose
 * first and third words point at itself), the main thread's [stack], the
 * runtime's own data, device mappings, and pages never touched (the kernel
 * says which pages are present or swapped out: PAGEMAP_SCAN, or
 * /proc/self/pagemap before Linux 6.7).
 *
 * A return address left behind by a frame that is gone (a freed coroutine
 * stack, an alternate signal stack whose handler called a library, a
 * profiler's saved backtrace) looks the same: the commit is refused until
 * it is overwritten.  ULP_FOREIGN_STACKS=none (read at start) turns the
 * search off, for a program that runs library code on no stack but its
 * threads', makecontext's and noted ones.  Cost: about the time to read
 * the process's resident writable memory, with every thread stopped
 * (docs/consistency.md has the measurement). */
#include <cpuid.h>
#if __has_include(<sys/platform/x86.h>)
#include <sys/platform/x86.h>
#endif
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "ulp_internal.h"

/* PAGEMAP_SCAN (linux/fs.h, Linux 6.7), not in older headers. */
struct ulp_page_region {
    uint64_t start, end, categories;
};
struct ulp_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define ULP_PAGEMAP_SCAN _IOWR('f', 16, struct ulp_pm_scan_arg)
#define ULP_PAGE_IS_PRESENT (1 << 3)
#define ULP_PAGE_IS_SWAPPED (1 << 4)
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)

#define PAGE 4096UL
#define CHUNK_WORDS 8192                /* 64 KiB read at a time */
#define REGION_SHIFT 21                 /* the filter's granule: 2 MiB */
#define REGION_SLOTS 1024               /* of the filter's hash set, a power of 2 */
#define MAX_SEARCHED_RANGES 256         /* as many as transition.c keeps */

/* The kernel's signal frame on x86-64 (struct rt_sigframe): the address
 * the handler returns to (glibc's __restore_rt: mov $15, %rax; syscall),
 * then the ucontext, whose %rip (the interrupted instruction) lies this far
 * from the frame's start. */
#define SIGFRAME_RIP_WORDS 22
static const uint8_t restore_rt[] = {0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};

static int search_off;                  /* ULP_FOREIGN_STACKS=none */
static int protection_keys;             /* the kernel enabled them: reads in place may fault */
static uint64_t search_limit = 256ULL << 20;    /* bytes: ULP_FOREIGN_STACKS=<MiB> */
static uintptr_t own_data_low, own_data_high;   /* the runtime's writable segments */
static uintptr_t restore_rt_at;         /* glibc's __restore_rt, found when the agent started */

/* Everything a search needs, kept out of the agent's small stack. */
static struct {
    const struct ulp_request_thread *threads;
    uint32_t nthreads;
    struct ulp_thread_index own_stacks; /* the threads by their own stack's start */
    uintptr_t code_low, code_high;      /* bounds of every prepared code range */
    /* The 2 MiB regions that hold prepared code, as a hash set (0: free;
     * a region number + 1): most words within the bounds (pointers to the
     * heap, to other libraries) leave after one probe.  Not usable (only
     * the bounds known, too much code): every word within them is tested. */
    uint64_t regions_with_code[REGION_SLOTS];
    int filter_usable;
    /* The ranges of prepared code, and whether each could be read when the
     * search began (every other thread stopped: then throughout).  A range
     * stays in transition.c's table after its object is unloaded. */
    struct {
        uintptr_t low, high;
        int readable;
    } code[MAX_SEARCHED_RANGES];
    uint32_t ncode;
    int in_place;                       /* the mapping searched: anonymous, pages known present */
    int pagemap;                        /* /proc/self/pagemap, -1 if not open */
    int pagemap_scan;                   /* 0 once the ioctl said it cannot */
    uint64_t searched;                  /* bytes so far */
    int over_limit;                     /* stopped: more than search_limit to search */
    uintptr_t words[SIGFRAME_RIP_WORDS + CHUNK_WORDS];
    uint64_t entries[CHUNK_WORDS];
    struct ulp_page_region regions[256];
    char maps[65536];
    uintptr_t found_at, found_word;
    char found_in[96];
} s;

static int runtime_segments(struct dl_phdr_info *info, size_t size, void *unused)
{
    (void)size, (void)unused;
    uintptr_t here = (uintptr_t)&search_off;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t low = info->dlpi_addr + ph->p_vaddr, high = low + ph->p_memsz;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W) && low <= here && here < high) {
            own_data_low = low & ~(PAGE - 1);
            own_data_high = (high + PAGE - 1) & ~(PAGE - 1);
            return 1;
        }
    }
    return 0;
}

/* glibc's __restore_rt, if it is where glibc puts it: next to sigaction
 * (a few dozen bytes after it in glibc 2.36), and only once there.  Else 0:
 * a signal frame is then told by the code its return address points at. */
static void find_restore_rt(void)
{
    static uint8_t near[8192];
    uintptr_t from = (uintptr_t)&sigaction - sizeof near / 2;
    if (ulp_read_memory(from, near, sizeof near) != 0)
        return;
    const uint8_t *found = memmem(near, sizeof near, restore_rt, sizeof restore_rt);
    if (found && !memmem(found + 1, sizeof near - (size_t)(found + 1 - near), restore_rt,
                         sizeof restore_rt))
        restore_rt_at = from + (uintptr_t)(found - near);
}

/* Did the kernel enable protection keys?  From what glibc found at start,
 * as sha256.c does: a CPUID of our own traps to a virtual machine's
 * hypervisor. */
static int protection_keys_enabled(void)
{
#if __has_include(<sys/platform/x86.h>)
    return CPU_FEATURE_ACTIVE(OSPKE);
#else
    unsigned int a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & bit_OSPKE);
#endif
}

/* At start (not while threads are stopped: dl_iterate_phdr takes the
 * loader's lock).  A fork child keeps what its parent found. */
ULP_HIDDEN void ulp_foreign_init(void)
{
    const char *setting = getenv("ULP_FOREIGN_STACKS");
    char *end;
    if (setting && strcmp(setting, "none") == 0) {
        search_off = 1;
    } else if (setting && *setting) {
        unsigned long mib = strtoul(setting, &end, 10);
        if (*end == '\0' && mib > 0 && mib < (1UL << 40))
            search_limit = (uint64_t)mib << 20;
        else
            ulp_log_message(ULP_LOG_RUNTIME, 0, "ULP_FOREIGN_STACKS=%s ignored: none, or a "
                            "size in MiB", setting);
    }
    dl_iterate_phdr(runtime_segments, NULL);
    find_restore_rt();
    protection_keys = protection_keys_enabled();
}

/* --- what is not searched ------------------------------------------------------ */

static uint64_t own_stack_start(const struct ulp_request_thread *t)
{
    return t->stack_low;
}

/* The threads' own stacks by their start: a process of many threads has
 * as many stacks, each a mapping the search asks about. */
static void index_own_stacks(void)
{
    ulp_thread_index_clear(&s.own_stacks, s.threads, s.nthreads, own_stack_start);
    for (uint32_t i = 0; i < s.nthreads && i < ULP_THREAD_INDEX_SLOTS / 2; i++)
        if (s.threads[i].stack_high)
            *ulp_thread_index_slot(&s.own_stacks, s.threads[i].stack_low) = i + 1;
}

static int is_own_stack(uintptr_t low, uintptr_t high)
{
    uint32_t at = *ulp_thread_index_slot(&s.own_stacks, low);
    return at != 0 && s.threads[at - 1].stack_high == high;
}

static int on_known_stack(uintptr_t address)
{
    uintptr_t high;
    for (uint32_t i = 0; i < s.nthreads; i++)
        if (s.threads[i].stack_low <= address && address < s.threads[i].stack_high)
            return 1;
    return ulp_coroutine_stack_of(address, &high) != NULL;
}

/* Is the return address at ADDRESS part of a saved context (a ucontext_t,
 * a coroutine library's register block) of a stack the commit judges: a
 * stack pointer into a thread's own stack or a noted coroutine stack next
 * to it?  The activation it resumes lives on that stack, which is searched
 * whole. */
static int saved_context_of_known_stack(uintptr_t address)
{
    enum { AROUND = 16 };
    uintptr_t around[2 * AROUND + 1];
    if (ulp_read_memory(address - AROUND * 8, around, sizeof around) != 0)
        return 0;
    for (int i = 0; i < 2 * AROUND + 1; i++)
        if (i != AROUND && on_known_stack(around[i]))
            return 1;
    return 0;
}

/* Is ADDRESS on a thread's own stack or a noted coroutine stack, in a
 * saved context of one, or in the runtime's data (its buffers hold copies
 * of what it searched)? */
static int judged_elsewhere(uintptr_t address)
{
    if (own_data_low <= address && address < own_data_high)
        return 1;
    return on_known_stack(address) || saved_context_of_known_stack(address);
}

/* Are the pages of [LOW, HIGH) all present, as far as the kernel's
 * page-table walk tells (no: cannot tell)? */
static int all_present(uintptr_t low, uintptr_t high)
{
    struct ulp_pm_scan_arg arg = {
        .size = sizeof arg, .start = low, .end = high, .vec = (uintptr_t)s.regions,
        .vec_len = 1, .category_anyof_mask = ULP_PAGE_IS_PRESENT,
        .return_mask = ULP_PAGE_IS_PRESENT,
    };
    return s.pagemap >= 0 && s.pagemap_scan && ioctl(s.pagemap, ULP_PAGEMAP_SCAN, &arg) == 1 &&
           s.regions[0].start == low && s.regions[0].end == high;
}

/* A stack glibc made for a thread (pthread_create; live, or kept for
 * reuse after the thread ended) has the thread's control block near its
 * top: a word that holds its own address (tcb), and the third word after
 * it the same (self). */
static int is_glibc_thread_stack(uintptr_t low, uintptr_t high, int anonymous)
{
    enum { TOP = 16384 };
    if (high - low < TOP)
        return 0;
    uintptr_t at = high - TOP;
    const uintptr_t *words = (const uintptr_t *)at;
    /* in place only where the kernel says the pages are there: reading a
     * page that is not might wait for a userfaultfd handler, a thread
     * stopped like every other */
    if (!anonymous || protection_keys || !all_present(at, high)) {
        if (ulp_read_memory(at, s.words, TOP) != 0)
            return 0;
        words = s.words;
    }
    for (size_t i = 0; i + 2 < TOP / 8; i++)
        if (words[i] == at + i * 8 && words[i + 2] == at + i * 8)
            return 1;
    return 0;
}

/* --- the search ------------------------------------------------------------------ */

static uint64_t *region_slot(uint64_t region)
{
    size_t i = (size_t)((region * 0x9e3779b97f4a7c15ULL) >> 54) & (REGION_SLOTS - 1);
    while (s.regions_with_code[i] != 0 && s.regions_with_code[i] != region + 1)
        i = (i + 1) & (REGION_SLOTS - 1);
    return &s.regions_with_code[i];
}

static void add_regions(uintptr_t low, uintptr_t high, void *count)
{
    size_t *n = count;
    if (s.ncode < MAX_SEARCHED_RANGES) {
        s.code[s.ncode].low = low;
        s.code[s.ncode].high = high;
        s.ncode++;
    }
    for (uint64_t r = low >> REGION_SHIFT; r <= (high - 1) >> REGION_SHIFT; r++) {
        if (*n >= REGION_SLOTS / 2) {
            s.filter_usable = 0;
            return;
        }
        uint64_t *slot = region_slot(r);
        if (*slot == 0) {
            *slot = r + 1;
            ++*n;
        }
    }
}

/* Which code ranges can be read (their first and last byte): one read of
 * them all, which stops at the first that cannot be; a system call per
 * range was a tenth of a small process's search. */
static void find_readable_code(void)
{
    static struct iovec local[2 * MAX_SEARCHED_RANGES], remote[2 * MAX_SEARCHED_RANGES];
    static uint8_t bytes[2 * MAX_SEARCHED_RANGES];
    for (uint32_t i = 0; i < s.ncode; i++) {
        s.code[i].readable = 1;
        remote[2 * i] = (struct iovec){(void *)s.code[i].low, 1};
        remote[2 * i + 1] = (struct iovec){(void *)(s.code[i].high - 1), 1};
    }
    for (uint32_t i = 0; i < 2 * s.ncode; i++)
        local[i] = (struct iovec){&bytes[i], 1};
    for (uint32_t from = 0; from < 2 * s.ncode;) {
        ssize_t got = ulp_read_memory_vector(local + from, remote + from, 2 * s.ncode - from);
        uint32_t failed = from + (got > 0 ? (uint32_t)got : 0);
        if (failed >= 2 * s.ncode)
            break;
        s.code[failed / 2].readable = 0;
        from = failed + 1;
    }
}

static void build_filter(void)
{
    size_t count = 0;
    memset(s.regions_with_code, 0, sizeof s.regions_with_code);
    s.filter_usable = 1;
    s.ncode = 0;
    if (ulp_for_each_code_range(add_regions, &count) != 0)
        s.filter_usable = 0;
    find_readable_code();
}

/* May WORD be an address of prepared code?  (No: certainly not.) */
static inline int may_be_code(uintptr_t word)
{
    if (word - s.code_low >= s.code_high - s.code_low)
        return 0;
    return !s.filter_usable || *region_slot(word >> REGION_SHIFT) != 0;
}

/* The length of an indirect call (ff /2) from its ModRM byte on, SIB
 * byte SIB (if it has one) and displacement included. */
static size_t indirect_call_length(uint8_t modrm, uint8_t sib)
{
    uint8_t mod = modrm >> 6, rm = modrm & 7;
    if (mod == 3)
        return 2;
    if (mod == 1)
        return rm == 4 ? 4 : 3;
    if (mod == 2)
        return rm == 4 ? 7 : 6;
    if (rm == 5)
        return 6;                               /* %rip + disp32 */
    if (rm == 4)
        return (sib & 7) == 5 ? 7 : 3;          /* SIB, maybe with disp32 */
    return 2;
}

/* Do the BEFORE bytes that end at a return address (B[7 - BEFORE..7))
 * end with a call instruction: e8 rel32, or ff /2 in any of its forms,
 * exactly as long as the bytes up to the return address? */
static int ends_with_call(const uint8_t b[7], size_t before)
{
    if (before >= 5 && b[2] == 0xe8)
        return 1;
    for (size_t length = 2; length <= 7 && length <= before; length++) {
        const uint8_t *call = b + 7 - length;
        if (call[0] == 0xff && (call[1] & 0x38) == 0x10 &&
            indirect_call_length(call[1], length > 2 ? call[2] : 0) == length)
            return 1;
    }
    return 0;
}

/* Is WORD, an address of prepared code, just past a call instruction: the
 * return address a suspended activation leaves?  A function pointer to the
 * start of a function is not (padding precedes it).  1 also when the code
 * before WORD cannot be read or only the bounds are known. */
static int is_return_address(uintptr_t word)
{
    for (uint32_t i = 0; i < s.ncode; i++) {
        if (word - s.code[i].low >= s.code[i].high - s.code[i].low)
            continue;
        size_t before = word - s.code[i].low < 7 ? word - s.code[i].low : 7;
        uint8_t b[7] = {0};
        if (before < 2)
            return 0;   /* no call fits before it in this code */
        if (s.code[i].readable)
            memcpy(b + 7 - before, (const void *)(word - before), before);
        else if (ulp_read_memory(word - before, b + 7 - before, before) != 0)
            return 1;
        return ends_with_call(b, before);
    }
    return 1;
}

/* Is WORD the start of a patchable function's padding: 14 NOPs, or the
 * stub ulp-prepare (or the trigger, for a private function) writes there
 * (lea r10, [rip + d]; jmp [rip + d]), before the entry's NOP, short jump
 * or endbr64?  A call just before it ends the function before: a call that
 * never returns (the compiler lays the next function right after a call
 * to abort or __stack_chk_fail), so no activation resumes there.  The
 * word is then a pointer to the padding, as every entry of the
 * __patchable_function_entries section each such library carries in its
 * writable data holds, not a return address (SQLite has 35 of them). */
static int is_padding_start(uintptr_t word)
{
    enum { LOOK = ULP_PADDING_SIZE + 4 };
    uint8_t b[LOOK];
    const uint8_t *at = NULL;
    for (uint32_t i = 0; i < s.ncode && !at; i++) {
        if (word - s.code[i].low >= s.code[i].high - s.code[i].low ||
            s.code[i].high - word < LOOK)
            continue;
        if (s.code[i].readable)
            at = (const uint8_t *)word;
        else if (ulp_read_memory(word, b, LOOK) == 0)
            at = b;
    }
    if (!at)
        return 0;
    static const uint8_t nops[ULP_PADDING_SIZE] = {
        0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90};
    int padding = memcmp(at, nops, sizeof nops) == 0 ||
                  (at[0] == 0x4c && at[1] == 0x8d && at[2] == 0x15 &&   /* lea r10, [rip + d] */
                   at[7] == 0xff && at[8] == 0x25);                      /* jmp [rip + d] */
    const uint8_t *entry = at + ULP_PADDING_SIZE;
    return padding && ((entry[0] == 0x66 && entry[1] == 0x90) || entry[0] == 0xeb ||
                       (entry[0] == 0x90 && entry[1] == 0x90) ||
                       (entry[0] == 0xf3 && entry[1] == 0x0f && entry[2] == 0x1e &&
                        entry[3] == 0xfa));
}

/* Is RETURNS_TO glibc's __restore_rt (or code that looks the same)? */
static int is_restore_rt(uintptr_t returns_to)
{
    uint8_t code[sizeof restore_rt];
    if (restore_rt_at)
        return returns_to == restore_rt_at;
    return ulp_read_memory(returns_to, code, sizeof code) == 0 &&
           memcmp(code, restore_rt, sizeof code) == 0;
}

/* Is WORDS[I] the interrupted %rip of a signal frame?  An activation whose
 * outermost frame a signal interrupted, and whose handler switched stacks,
 * leaves no return address: that %rip is its word.  LEAD words before
 * WORDS[0] can be read too: the kernel wrote the frame whole, so it lies
 * in one run of present (or swapped out) pages, and no more is needed. */
static int interrupted_rip(const uintptr_t *words, size_t i, size_t lead)
{
    if (i + lead < SIGFRAME_RIP_WORDS)
        return 0;   /* the frame would begin before the run of pages */
    return is_restore_rt(words[(ptrdiff_t)i - SIGFRAME_RIP_WORDS]);
}

/* Search the N words at WORDS, a copy of (or the memory itself) at AT,
 * LEAD words before WORDS[0] readable as well. */
static int search_words(const uintptr_t *words, size_t n, uintptr_t at, size_t lead)
{
    for (size_t i = 0; i < n; i++) {
        uintptr_t word = words[i];
        if (may_be_code(word) && ulp_is_prepared_code(word) &&
            ((is_return_address(word) && !is_padding_start(word)) ||
             interrupted_rip(words, i, lead)) &&
            !judged_elsewhere(at + i * 8)) {
            s.found_at = at + i * 8;
            s.found_word = word;
            return 1;
        }
    }
    return 0;
}

/* Search [LOW, HIGH), part of the run of present pages that begins at
 * RUN: 1 and s.found_* if a return address into prepared code lies there,
 * outside what is judged elsewhere.  Anonymous memory
 * the kernel says is present (or swapped out) is read in place: every
 * other thread is stopped, nothing unmaps it, and reading it cannot fault
 * past recovery; anything else is copied with a read that fails softly
 * (a file shrunk under its mapping would raise SIGBUS; a protection key
 * the agent thread lacks, SIGSEGV: with protection keys, everything is). */
static int search_present(uintptr_t run, uintptr_t low, uintptr_t high)
{
    if ((s.searched += high - low) > search_limit) {
        s.over_limit = 1;
        return 1;
    }
    if (s.in_place)
        return search_words((const uintptr_t *)low, (high - low) / 8, low, (low - run) / 8);
    for (uintptr_t at = low; at < high;) {
        size_t n = (high - at) / 8 < CHUNK_WORDS ? (high - at) / 8 : CHUNK_WORDS;
        /* with the words a signal frame would need before AT, if in the run */
        size_t lead = (at - run) / 8 < SIGFRAME_RIP_WORDS ? (at - run) / 8 : SIGFRAME_RIP_WORDS;
        if (ulp_read_memory(at - lead * 8, s.words, (lead + n) * 8) != 0) {
            at += PAGE;             /* gone meanwhile, or not readable: nothing there */
            run = at;
            continue;
        }
        if (search_words(s.words + lead, n, at, lead))
            return 1;
        at += n * 8;
    }
    return 0;
}

/* The present (or swapped out) pages of [LOW, HIGH), from the kernel's
 * page-table walk: 1 if one holds a return address into prepared code. */
static int search_scanned(uintptr_t low, uintptr_t high)
{
    struct ulp_pm_scan_arg arg;
    uintptr_t run = low, run_end = 0;   /* pages the kernel lists apart may adjoin */
    for (uintptr_t at = low; at < high;) {
        memset(&arg, 0, sizeof arg);
        arg.size = sizeof arg;
        arg.start = at;
        arg.end = high;
        arg.vec = (uintptr_t)s.regions;
        arg.vec_len = sizeof s.regions / sizeof s.regions[0];
        arg.category_anyof_mask = ULP_PAGE_IS_PRESENT | ULP_PAGE_IS_SWAPPED;
        arg.return_mask = ULP_PAGE_IS_PRESENT | ULP_PAGE_IS_SWAPPED;
        long found = ioctl(s.pagemap, ULP_PAGEMAP_SCAN, &arg);
        if (found < 0)
            return -1;
        for (long i = 0; i < found; i++) {
            if (s.regions[i].start != run_end)
                run = s.regions[i].start;
            run_end = s.regions[i].end;
            if (search_present(run, s.regions[i].start, s.regions[i].end))
                return 1;
        }
        if (arg.walk_end <= at)
            break;
        at = arg.walk_end;
    }
    return 0;
}

/* The same from /proc/self/pagemap, an entry per page, each run of
 * present pages searched whole. */
static int search_paged(uintptr_t low, uintptr_t high)
{
    uintptr_t run = 0, run_end = 0;
    for (uintptr_t at = low; at < high;) {
        size_t pages = (high - at) / PAGE < CHUNK_WORDS ? (high - at) / PAGE : CHUNK_WORDS;
        ssize_t got = pread(s.pagemap, s.entries, pages * 8, (off_t)(at / PAGE * 8));
        if (got <= 0) {
            s.in_place = 0;     /* cannot tell: search all, softly */
            return (run_end > run && search_present(run, run, run_end)) ||
                   search_present(at, at, high);
        }
        pages = (size_t)got / 8;
        for (size_t i = 0; i < pages; i++) {
            uintptr_t page = at + i * PAGE;
            if (s.entries[i] & (PM_PRESENT | PM_SWAPPED)) {
                if (page != run_end)
                    run = page;
                run_end = page + PAGE;
            } else if (run_end > run) {
                if (search_present(run, run, run_end))
                    return 1;
                run = run_end;
            }
        }
        at += pages * PAGE;
    }
    return run_end > run && search_present(run, run, run_end);
}

static int search_mapping(uintptr_t low, uintptr_t high, int anonymous)
{
    s.in_place = 0;
    if (s.pagemap < 0)
        return search_present(low, low, high);
    s.in_place = anonymous && !protection_keys;     /* a page's key may deny the agent */
    if (s.pagemap_scan) {
        int found = search_scanned(low, high);
        if (found >= 0)
            return found;
        s.pagemap_scan = 0;     /* an older kernel: page by page from now on */
    }
    return search_paged(low, high);
}

/* The mapping [LOW, HIGH) (anonymous if INODE is 0; PATH its name, maybe
 * empty), readable and writable: is it one to search, and does it hold a
 * word an activation leaves? */
static int search_writable(uintptr_t low, uintptr_t high, uint64_t inode, const char *path)
{
    if ((strncmp(path, "/dev/", 5) == 0 && strncmp(path, "/dev/zero", 9) != 0) ||
        strcmp(path, "[stack]") == 0 || strncmp(path, "[v", 2) == 0)
        return 0;   /* a device's memory; the main thread's own; the kernel's */
    if (is_own_stack(low, high) || (own_data_low <= low && high <= own_data_high) ||
        is_glibc_thread_stack(low, high, inode == 0))
        return 0;   /* judged with its thread; the runtime's own; a thread's */
    if (!search_mapping(low, high, inode == 0) || s.over_limit)
        return !!s.over_limit;
    snprintf(s.found_in, sizeof s.found_in, "%s%s0x%lx-0x%lx", path, path[0] ? " " : "",
             (unsigned long)low, (unsigned long)high);
    return 1;
}

/* One line of /proc/self/maps. */
static int search_line(char *line)
{
    char perms[8] = "", path[80] = "";
    unsigned long low, high, offset, inode;
    if (sscanf(line, "%lx-%lx %7s %lx %*s %lu %79s", &low, &high, perms, &offset, &inode,
               path) < 5)
        return 0;
    if (perms[0] != 'r' || perms[1] != 'w')
        return 0;
    return search_writable(low, high, inode, path);
}

/* ioctl(/proc/self/maps, PROCMAP_QUERY) (linux/fs.h, Linux 6.11): the
 * next readable and writable mapping at or after an address, without the
 * text of every mapping (which took most of a small process's search). */
struct ulp_procmap_query {
    uint64_t size, query_flags, query_addr;
    uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
    uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
};
#define ULP_PROCMAP_QUERY _IOWR('f', 17, struct ulp_procmap_query)
#define ULP_QUERY_READABLE 0x01
#define ULP_QUERY_WRITABLE 0x02
#define ULP_QUERY_COVERING_OR_NEXT 0x10

/* The name of the mapping at LOW, into the message's "where". */
static void name_found_in(int maps, uint64_t low)
{
    struct ulp_procmap_query q;
    char name[80] = "";
    memset(&q, 0, sizeof q);
    q.size = sizeof q;
    q.query_addr = low;
    q.vma_name_size = sizeof name;
    q.vma_name_addr = (uintptr_t)name;
    if (ioctl(maps, ULP_PROCMAP_QUERY, &q) != 0 || q.vma_name_size == 0)
        return;
    snprintf(s.found_in, sizeof s.found_in, "%s 0x%lx-0x%lx", name, (unsigned long)q.vma_start,
             (unsigned long)q.vma_end);
}

/* Search every readable and writable mapping the kernel names one query at
 * a time: 1 found, 0 not, -1 if it cannot be asked (an older kernel; the
 * mappings before are searched again from the text). */
static int search_queried(int maps)
{
    struct ulp_procmap_query q;
    for (uint64_t at = 0;;) {
        /* no name asked (it costs the kernel a path walk each): only a
         * device's memory is left alone by name, and it is read with a
         * copy that fails softly; the main thread's [stack] is its own */
        memset(&q, 0, sizeof q);
        q.size = sizeof q;
        q.query_flags = ULP_QUERY_COVERING_OR_NEXT | ULP_QUERY_READABLE | ULP_QUERY_WRITABLE;
        q.query_addr = at;
        if (ioctl(maps, ULP_PROCMAP_QUERY, &q) != 0)
            return errno == ENOENT ? 0 : -1;    /* none after AT; or cannot ask: the text */
        if (search_writable(q.vma_start, q.vma_end, q.inode, ""))
            return name_found_in(maps, q.vma_start), 1;
        at = q.vma_end;
    }
}

/* Search the readable and writable mappings of a table the commit read
 * already (threadstacks.c), every thread stopped since: no query each. */
static int search_table(int maps, const struct ulp_mapping *table, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (table[i].writable &&
            search_writable(table[i].low, table[i].high, table[i].inode, ""))
            return name_found_in(maps, table[i].low), 1;
    return 0;
}

/* Search every mapping /proc/self/maps lists, a buffer of lines at a time. */
static int search_maps(int maps)
{
    size_t kept = 0;
    for (;;) {
        ssize_t got = read(maps, s.maps + kept, sizeof s.maps - 1 - kept);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return 0;
        size_t end = kept + (size_t)got;
        s.maps[end] = '\0';
        char *line = s.maps, *newline;
        while ((newline = strchr(line, '\n')) != NULL) {
            *newline = '\0';
            if (search_line(line))
                return 1;
            line = newline + 1;
        }
        kept = end - (size_t)(line - s.maps);
        memmove(s.maps, line, kept);
    }
}

/* A stopped thread that runs prepared code on a stack the commit cannot
 * judge: its activation may leave no word anywhere (its outermost frame
 * has not called out yet), and a coroutine's may be resumed later by any
 * thread.  NULL if none. */
static const struct ulp_request_thread *running_on_unnoted_stack(void)
{
    for (uint32_t i = 0; i < s.nthreads; i++) {
        const struct ulp_request_thread *t = &s.threads[i];
        if (ulp_is_prepared_code(t->rip) && !on_known_stack(t->rsp))
            return t;
    }
    return NULL;
}

/* With every thread but the agent stopped, as THREADS[0..N) describe, the
 * code of the commit's libraries known and the coroutine table held
 * (ulp_coroutine_stacks_judgeable): NULL if no activation waits on memory
 * the commit cannot judge, else why not, in MESSAGE. */
ULP_HIDDEN const char *ulp_unnoted_stack_activation(const struct ulp_request_thread *threads,
                                                    uint32_t n, char *message, size_t size)
{
    if (search_off)
        return NULL;
    s.over_limit = 0;
    s.threads = threads;
    s.nthreads = n;
    index_own_stacks();
    ulp_prepared_code_bounds(&s.code_low, &s.code_high);
    if (s.code_low >= s.code_high)
        return NULL;
    const struct ulp_request_thread *running = running_on_unnoted_stack();
    if (running) {
        snprintf(message, size, "thread %d runs library code (0x%lx) on a stack the runtime "
                 "was not told of (%%rsp 0x%lx: a coroutine switched without makecontext? "
                 "note its stacks with ulp_note_stack, or retry once it has left the library)",
                 running->tid, (unsigned long)running->rip, (unsigned long)running->rsp);
        return message;
    }
    build_filter();
    int maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (maps < 0) {
        snprintf(message, size, "cannot read /proc/self/maps to look for activations on "
                 "stacks not noted (%s)", strerror(errno));
        return message;
    }
    s.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    s.pagemap_scan = 1;
    s.searched = 0;
    uint32_t nmappings = 0;
    const struct ulp_mapping *mappings = ulp_take_fresh_mappings(&nmappings);
    int found = mappings ? search_table(maps, mappings, nmappings) : search_queried(maps);
    if (found < 0)
        found = search_maps(maps);
    close(maps);
    if (s.pagemap >= 0)
        close(s.pagemap);
    if (!found)
        return NULL;
    if (s.over_limit) {
        snprintf(message, size, "more than %lu MiB of memory to search for activations on "
                 "stacks nobody noted (ULP_FOREIGN_STACKS); if the program runs library code "
                 "only on its threads', makecontext's and noted stacks, trigger with "
                 "--trust-stacks", (unsigned long)(search_limit >> 20));
        return message;
    }
    snprintf(message, size, "an activation waits on a stack the runtime was not told of: "
             "return address 0x%lx at 0x%lx in %s (a coroutine switched without makecontext? "
             "note its stacks with ulp_note_stack, or retry once it has left the library)",
             (unsigned long)s.found_word, (unsigned long)s.found_at, s.found_in);
    return message;
}
