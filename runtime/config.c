/* Which processes get the agent: the administrator's choice.
 *
 * A host that preloads the runtime everywhere (/etc/ld.so.preload) may
 * have programs that must never carry the patching agent (a program that
 * must stay single-threaded, a sensitive daemon) or that should get it only
 * on demand.  /etc/ulp/agent.conf says so, a rule per line, the first that
 * matches the process deciding:
 *
 *     # MODE   KIND  PATTERN
 *     off     path  /usr/sbin/sshd
 *     off     path  /opt/vault/bin/[a-z]*d
 *     demand  user  postgres
 *     start   user  0
 *
 * MODE is off (no agent, ever: the process cannot be patched), demand (none
 * until a trigger starts it, runtime/demand.c) or start (one from the
 * start).  KIND path matches PATTERN (shell wildcards, `*` crossing `/`)
 * against the program's path (/proc/self/exe); KIND user matches a user
 * name (from /etc/passwd itself: no NSS module is loaded into every
 * process) or number against the real or the effective user.  A line that
 * does not parse is logged (`ulp messages`) and skipped: a process never
 * fails because of this file.
 *
 * The environment has its say too: ULP_AGENT (off, demand) and
 * ULP_AGENT_CONFIG, a file of the same rules read besides this one (tests,
 * a user's own processes).  Of all that apply, the most restrictive wins
 * (off, then demand, then start), so neither the environment nor a second
 * file can give an agent to a process the administrator's file keeps it
 * from.  In a set-user-ID or set-group-ID program (AT_SECURE) the
 * environment is not read. */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "ulp_internal.h"

#define SYSTEM_CONFIG "/etc/ulp/agent.conf"
#define CONFIG_MAX 16384                /* bytes read of a file; more is ignored, and logged */

static const char *const mode_names[] = {
    [ULP_AGENT_MODE_START] = "start",
    [ULP_AGENT_MODE_DEMAND] = "demand",
    [ULP_AGENT_MODE_OFF] = "off",
};

ULP_HIDDEN const char *ulp_agent_mode_name(enum ulp_agent_mode mode)
{
    return mode_names[mode];
}

/* Read PATH whole into BUFFER (NUL-terminated); -1 if it cannot be read. */
static ssize_t read_file(const char *path, char *buffer, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -1;
    size_t used = 0;
    for (;;) {
        ssize_t got = read(fd, buffer + used, size - 1 - used);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        used += (size_t)got;
        if (used == size - 1)
            break;
    }
    close(fd);
    buffer[used] = '\0';
    return (ssize_t)used;
}

/* The user number NAME stands for: a number, or a name in /etc/passwd;
 * -1 if none. */
static long user_number(const char *name)
{
    static char passwd[65536];
    char *end;
    long number = strtol(name, &end, 10);
    if (*name && *end == '\0' && number >= 0)
        return number;
    if (read_file("/etc/passwd", passwd, sizeof passwd) < 0)
        return -1;
    size_t length = strlen(name);
    for (char *line = passwd; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1
                                                                        : NULL) {
        /* name:password:uid:... */
        if (strncmp(line, name, length) != 0 || line[length] != ':')
            continue;
        char *uid = strchr(line + length + 1, ':');
        if (!uid)
            return -1;
        number = strtol(uid + 1, &end, 10);
        return *end == ':' ? number : -1;
    }
    return -1;
}

static int rule_matches(const char *kind, const char *pattern, const char *program)
{
    if (strcmp(kind, "path") == 0)
        return program[0] && fnmatch(pattern, program, 0) == 0;
    long uid = user_number(pattern);
    return uid >= 0 && ((uid_t)uid == getuid() || (uid_t)uid == geteuid());
}

static int mode_of(const char *name)
{
    for (int mode = 0; mode < (int)(sizeof mode_names / sizeof mode_names[0]); mode++)
        if (strcmp(name, mode_names[mode]) == 0)
            return mode;
    return -1;
}

/* The mode the first rule of the file at PATH that matches the process
 * gives, or -1 (no rule matches, no file).  WHY: where it came from. */
static int file_mode(const char *path, const char *program, char *why, size_t why_size)
{
    static char text[CONFIG_MAX];
    ssize_t size = read_file(path, text, sizeof text);
    if (size < 0)
        return -1;
    if ((size_t)size == sizeof text - 1)
        ulp_log_message(ULP_LOG_RUNTIME, 0, "only the first %d bytes read of %s",
                        CONFIG_MAX - 1, path);
    int number = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char mode[16], kind[16], pattern[256], extra;
        number++;
        char *comment = strchr(line, '#');
        if (comment)
            *comment = '\0';
        int fields = sscanf(line, "%15s %15s %255s %c", mode, kind, pattern, &extra);
        if (fields <= 0)
            continue;       /* blank, or a comment */
        int which = fields == 3 ? mode_of(mode) : -1;
        if (which < 0 || (strcmp(kind, "path") != 0 && strcmp(kind, "user") != 0)) {
            ulp_log_message(ULP_LOG_RUNTIME, 0, "ignored line %d (not MODE KIND PATTERN) of %s",
                            number, path);
            continue;
        }
        if (rule_matches(kind, pattern, program)) {
            snprintf(why, why_size, "line %d (%s %s) of %s", number, kind, pattern, path);
            return which;
        }
    }
    return -1;
}

static int env_mode(void)
{
    const char *setting = secure_getenv("ULP_AGENT");
    if (!setting)
        return -1;
    if (strcmp(setting, "off") == 0 || strcmp(setting, "0") == 0 || strcmp(setting, "no") == 0)
        return ULP_AGENT_MODE_OFF;
    return strcmp(setting, "demand") == 0 ? ULP_AGENT_MODE_DEMAND : ULP_AGENT_MODE_START;
}

/* The agent's mode for this process, and why, in WHY (a sentence part). */
ULP_HIDDEN enum ulp_agent_mode ulp_agent_mode(char *why, size_t why_size)
{
    static char program[4096];
    ssize_t length = readlink("/proc/self/exe", program, sizeof program - 1);
    program[length > 0 ? length : 0] = '\0';
    int mode = ULP_AGENT_MODE_START;
    snprintf(why, why_size, "the default");
    int from_env = env_mode();
    if (from_env > mode) {
        mode = from_env;
        snprintf(why, why_size, "ULP_AGENT");
    }
    const char *files[] = {SYSTEM_CONFIG, secure_getenv("ULP_AGENT_CONFIG")};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char rule[320];
        int from_file = files[i] && *files[i] ? file_mode(files[i], program, rule, sizeof rule)
                                               : -1;
        if (from_file > mode) {
            mode = from_file;
            snprintf(why, why_size, "%s", rule);
        }
    }
    return (enum ulp_agent_mode)mode;
}
