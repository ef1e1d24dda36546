/* The runtime's message log as `ulp messages` reads it (log version 1).
 *
 * runtime/log.c explains how it is written; ulp/messages.py reads it
 * through /proc/PID/mem and mirrors this file; tests/test_messages.py
 * compiles this header and checks every offset, size and value of the
 * mirror.  docs/runtime-abi.md, "The message log", describes it.
 *
 * The runtime exports one object, ulp_log (struct ulp_log_header): it names
 * the ring of ULP_LOG_RECORDS records and counts the records ever begun. */
#ifndef ULP_LOG_H
#define ULP_LOG_H

#include <stdint.h>

#define ULP_LOG_MAGIC "ULPLOG"
#define ULP_LOG_VERSION 1
#define ULP_LOG_RECORDS 256         /* a power of two: ticket % records is a mask */
#define ULP_LOG_TEXT 104            /* bytes of text, the terminating NUL included */

enum ulp_log_kind {
    ULP_LOG_RUNTIME = 1,            /* the runtime was loaded */
    ULP_LOG_AGENT = 2,              /* the agent started, ended, or is off */
    ULP_LOG_LIBRARY = 3,            /* a prepared library registered or unloaded */
    ULP_LOG_STAGED = 4,             /* a patch was loaded, its versions still invisible */
    ULP_LOG_APPLIED = 5,            /* a patch's universe was published */
    ULP_LOG_REVERTED = 6,
    ULP_LOG_REFUSED = 7,            /* a request was refused: the text says why */
};

/* One message.  seq: 0 if the record was never written, 2 * ticket + 1
 * while its writer fills it, 2 * ticket + 2 once it is complete, where
 * ticket numbers every record ever begun, from 0. */
struct ulp_log_record {
    uint64_t seq;
    int64_t time_ns;                /* CLOCK_REALTIME, nanoseconds since the epoch */
    uint32_t kind;                  /* enum ulp_log_kind */
    int32_t tid;                    /* the thread that wrote it */
    uint64_t address;               /* a library descriptor it is about, or 0 */
    char text[ULP_LOG_TEXT];        /* NUL-terminated, cut to fit */
};

struct ulp_log_header {
    char magic[8];
    uint32_t version;
    uint32_t nrecords;              /* ULP_LOG_RECORDS */
    uint32_t record_size;           /* sizeof(struct ulp_log_record) */
    uint32_t text_size;             /* ULP_LOG_TEXT */
    uint64_t tickets;               /* records ever begun */
    uint64_t dropped;               /* records given up: their slot was busy */
    uint64_t records;               /* address of the ring: struct ulp_log_record[nrecords] */
    uint64_t reserved[2];
};

_Static_assert(sizeof(struct ulp_log_record) == 136, "log record layout");
_Static_assert(sizeof(struct ulp_log_header) == 64, "log header layout");
_Static_assert((ULP_LOG_RECORDS & (ULP_LOG_RECORDS - 1)) == 0, "a power of two");
#endif
