/* SQLite under load while its CVE-2025-6965 fix is applied and reverted.
 *
 * usage: sqlite_load THREADS DBFILE
 *
 * The main thread writes DBFILE: table t of ROWS rows whose values follow a
 * formula, so every query result is known without SQLite.  THREADS workers,
 * each with its own read-only connection, run aggregate, GROUP BY and point
 * queries over random ranges and check every result against the formula;
 * each also writes, sums and deletes rows in its own in-memory database.
 * A probe thread prepares one aggregate query on a connection whose column
 * limit is 1, where the fix changes the outcome: 3.40.1 answers 21, the fixed version refuses the query with "more than 1
 * aggregate terms".  It counts both outcomes and how often the outcome
 * switched; anything else is a wrong result.
 *
 * Prints "ready" once every thread has completed a round, runs until stdin
 * is closed, then prints one JSON line of counters and exits 0 only if no
 * operation failed and no result was wrong.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "load_common.h"

#define ROWS 20000
#define GROUPS 13

static const char *db_path;

static long long value_a(long long id) { return id * 7 % 1000; }
static long long value_b(long long id) { return id % GROUPS; }

static uint64_t next_random(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static void count_result(int r)
{
    atomic_fetch_add(&ops, 1);
    if (r < 0)
        atomic_fetch_add(&failures, 1);
    else if (r > 0)
        atomic_fetch_add(&wrong, 1);
}

static int create_database(void)
{
    sqlite3 *db;
    char *err = NULL;
    unlink(db_path);
    if (sqlite3_open(db_path, &db) != SQLITE_OK)
        return -1;
    int rc = sqlite3_exec(db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b INT, c TEXT);"
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<20000)"
        " INSERT INTO t SELECT i, i*7%1000, i%13, 'row'||i FROM n;"
        "CREATE INDEX tb ON t(b);", NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fprintf(stderr, "sqlite_load: %s\n", err);
    sqlite3_free(err);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

/* count, sum(a), sum(b) over id in [lo, hi] */
static int range_aggregate(sqlite3_stmt *st, long long lo, long long hi)
{
    long long n = 0, sa = 0, sb = 0;
    for (long long id = lo; id <= hi; id++, n++) {
        sa += value_a(id);
        sb += value_b(id);
    }
    sqlite3_bind_int64(st, 1, lo);
    sqlite3_bind_int64(st, 2, hi);
    int r = sqlite3_step(st) == SQLITE_ROW ? 0 : -1;
    if (r == 0 && (sqlite3_column_int64(st, 0) != n || sqlite3_column_int64(st, 1) != sa
                   || sqlite3_column_int64(st, 2) != sb))
        r = 1;
    if (sqlite3_reset(st) != SQLITE_OK)
        r = -1;
    return r;
}

/* b, count(*), sum(a) GROUP BY b over id in [lo, hi] */
static int range_groups(sqlite3_stmt *st, long long lo, long long hi)
{
    long long n[GROUPS] = {0}, sa[GROUPS] = {0};
    int r = 0, rows = 0, expected = 0;
    for (long long id = lo; id <= hi; id++) {
        n[value_b(id)]++;
        sa[value_b(id)] += value_a(id);
    }
    for (int g = 0; g < GROUPS; g++)
        expected += n[g] > 0;
    sqlite3_bind_int64(st, 1, lo);
    sqlite3_bind_int64(st, 2, hi);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        long long g = sqlite3_column_int64(st, 0);
        rows++;
        if (g < 0 || g >= GROUPS || sqlite3_column_int64(st, 1) != n[g]
            || sqlite3_column_int64(st, 2) != sa[g])
            r = 1;
    }
    if (rc != SQLITE_DONE || sqlite3_reset(st) != SQLITE_OK)
        return -1;
    return r || rows != expected;
}

static int point(sqlite3_stmt *st, long long id)
{
    char want[32];
    snprintf(want, sizeof want, "row%lld", id);
    sqlite3_bind_int64(st, 1, id);
    int r = sqlite3_step(st) == SQLITE_ROW ? 0 : -1;
    if (r == 0 && (sqlite3_column_int64(st, 1) != value_a(id)
                   || strcmp((const char *)sqlite3_column_text(st, 0), want) != 0))
        r = 1;
    if (sqlite3_reset(st) != SQLITE_OK)
        r = -1;
    return r;
}

/* Insert K rows into the thread's own in-memory table, sum them, delete. */
static int write_round(sqlite3 *mem, sqlite3_stmt *ins, sqlite3_stmt *sum, int k)
{
    long long want = 0;
    if (sqlite3_exec(mem, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    for (int i = 1; i <= k; i++) {
        sqlite3_bind_int(ins, 1, i * 3);
        want += i * 3;
        if (sqlite3_step(ins) != SQLITE_DONE || sqlite3_reset(ins) != SQLITE_OK)
            return -1;
    }
    if (sqlite3_exec(mem, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    int r = sqlite3_step(sum) == SQLITE_ROW ? 0 : -1;
    if (r == 0 && (sqlite3_column_int64(sum, 0) != want || sqlite3_column_int(sum, 1) != k))
        r = 1;
    if (sqlite3_reset(sum) != SQLITE_OK || sqlite3_exec(mem, "DELETE FROM w", NULL, NULL, NULL))
        r = -1;
    return r;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    return sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK ? 0 : -1;
}

static void *worker(void *arg)
{
    uint64_t state = 0x9E3779B97F4A7C15ULL * ((uintptr_t)arg + 1);
    sqlite3 *db = NULL, *mem = NULL;
    sqlite3_stmt *agg, *grp, *pt, *ins, *sum;
    int first = 1;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK
        || sqlite3_open(":memory:", &mem) != SQLITE_OK
        || sqlite3_exec(mem, "CREATE TABLE w(x INT)", NULL, NULL, NULL) != SQLITE_OK
        || prepare(db, "SELECT count(*), sum(a), sum(b) FROM t WHERE id BETWEEN ?1 AND ?2", &agg)
        || prepare(db, "SELECT b, count(*), sum(a) FROM t WHERE id BETWEEN ?1 AND ?2"
                       " GROUP BY b ORDER BY b", &grp)
        || prepare(db, "SELECT c, a FROM t WHERE id = ?1", &pt)
        || prepare(mem, "INSERT INTO w VALUES(?1)", &ins)
        || prepare(mem, "SELECT sum(x), count(*) FROM w", &sum)) {
        fprintf(stderr, "sqlite_load: worker setup: %s\n", db ? sqlite3_errmsg(db) : "open");
        atomic_fetch_add(&failures, 1);
        atomic_fetch_add(&started, 1);
        return NULL;
    }
    while (!atomic_load(&stop)) {
        long long lo = 1 + (long long)(next_random(&state) % ROWS);
        long long hi = lo + (long long)(next_random(&state) % 500);
        if (hi > ROWS)
            hi = ROWS;
        count_result(range_aggregate(agg, lo, hi));
        count_result(range_groups(grp, lo, hi));
        count_result(point(pt, lo));
        count_result(write_round(mem, ins, sum, 1 + (int)(next_random(&state) % 50)));
        /* A statement prepared now: the parser and the aggregate analysis
         * run under whatever version is current. */
        sqlite3_stmt *fresh;
        if (prepare(db, "SELECT count(*), sum(a), sum(b) FROM t WHERE id BETWEEN ?1 AND ?2",
                    &fresh) == 0) {
            count_result(range_aggregate(fresh, lo, hi));
            sqlite3_finalize(fresh);
        } else {
            count_result(-1);
        }
        if (first) {
            first = 0;
            atomic_fetch_add(&started, 1);
        }
    }
    sqlite3_finalize(agg);
    sqlite3_finalize(grp);
    sqlite3_finalize(pt);
    sqlite3_finalize(ins);
    sqlite3_finalize(sum);
    sqlite3_close(db);
    sqlite3_close(mem);
    return NULL;
}

static void *probe(void *arg)
{
    (void)arg;
    sqlite3 *db;
    int last = -1, first = 1;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK
        || sqlite3_exec(db, "CREATE TABLE p(a, b, c); INSERT INTO p VALUES(1,2,3),(4,5,6)",
                        NULL, NULL, NULL) != SQLITE_OK) {
        atomic_fetch_add(&failures, 1);
        atomic_fetch_add(&started, 1);
        return NULL;
    }
    sqlite3_limit(db, SQLITE_LIMIT_COLUMN, 1);
    while (!atomic_load(&stop)) {
        sqlite3_stmt *st = NULL;
        int version = -1;
        /* Three column terms in one aggregate query, limit 1. */
        int rc = sqlite3_prepare_v2(db, "SELECT sum(a+b+c) FROM p", -1, &st, NULL);
        if (rc == SQLITE_OK) {
            if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) == 21)
                version = 0;
        } else if (rc == SQLITE_ERROR
                   && strcmp(sqlite3_errmsg(db), "more than 1 aggregate terms") == 0) {
            version = 1;
        }
        sqlite3_finalize(st);
        atomic_fetch_add(&probe_ops, 1);
        if (version < 0)
            atomic_fetch_add(&wrong, 1);
        if (version >= 0) {
            atomic_fetch_add(version ? &new_seen : &old_seen, 1);
            if (last >= 0 && version != last)
                atomic_fetch_add(&switches, 1);
            last = version;
        } else {
            fprintf(stderr, "sqlite_load: probe: rc %d: %s\n", rc, sqlite3_errmsg(db));
        }
        if (first) {
            first = 0;
            atomic_fetch_add(&started, 1);
        }
    }
    sqlite3_close(db);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    if (argc != 3 || threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "usage: sqlite_load THREADS(1..%d) DBFILE\n", MAX_THREADS);
        return 2;
    }
    db_path = argv[2];
    if (create_database() != 0)
        return 1;
    return run_load(threads, worker, probe);
}
