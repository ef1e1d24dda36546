/* The target program of the trigger-safety tests (tests/test_trigger_safety.py).
 *
 * Features are switched on by arguments; commands arrive one per line on
 * stdin and are answered one line each, so the tests synchronise on lines:
 *   busy N            N threads calling ts_both in a loop
 *   blocked N         N threads waiting on a condition variable forever
 *   hammer N DLPATH   N threads in malloc/realloc/free and dlopen/dlsym/
 *                     dlclose of DLPATH, one thread sending SIGUSR1 to the
 *                     process in a loop, a SIGUSR1 handler calling ts_both
 *   syscalls FIFO1 FIFO2 SOCKET
 *                     threads blocked in read(FIFO1), poll(FIFO2), accept
 *                     (unix SOCKET), nanosleep (measured), a futex wait and
 *                     pthread_cond_wait
 *   regs N            N threads holding known values in every general-purpose
 *                     and vector register, the flags, MXCSR and the red zone
 *   churn             a thread creating and joining short-lived threads
 *   hardened          forbid writable+executable memory: prctl(PR_SET_MDWE)
 *                     and a seccomp filter killing on W+X mmap/mprotect
 * Commands: call, stats, expect V, regs-ready, regs-check, wake, wx, vfork. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int ts_both(void);

#define SMALL_STACK (64 * 1024)

static atomic_ulong mixed;          /* ts_both answers that are neither 11 nor 22 */
static atomic_ulong calls;
static atomic_int stopping;

static int consistent(int value)
{
    return value == 11 || value == 22;
}

static void check_both(void)
{
    if (!consistent(ts_both()))
        atomic_fetch_add(&mixed, 1);
    atomic_fetch_add(&calls, 1);
}

static pthread_t start_thread(void *(*body)(void *), void *arg, const char *name)
{
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, SMALL_STACK);
    if (pthread_create(&thread, &attr, body, arg) != 0) {
        printf("cannot create thread %s\n", name);
        exit(2);
    }
    pthread_attr_destroy(&attr);
    pthread_setname_np(thread, name);
    return thread;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* --- busy and blocked threads ------------------------------------------------ */
struct busy {
    atomic_ulong iterations;
    atomic_int last;
};
static struct busy *busy;
static int nbusy;

static void *busy_main(void *arg)
{
    struct busy *me = arg;
    while (!atomic_load(&stopping)) {
        int value = ts_both();
        if (!consistent(value))
            atomic_fetch_add(&mixed, 1);
        atomic_store(&me->last, value);
        atomic_fetch_add(&me->iterations, 1);
    }
    return NULL;
}

static pthread_mutex_t never_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;

static void *blocked_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&never_lock);
    while (!atomic_load(&stopping))
        pthread_cond_wait(&never, &never_lock);
    pthread_mutex_unlock(&never_lock);
    return NULL;
}

/* Every busy thread has called ts_both at least twice since the command and
 * last saw `value`. */
static void expect(int value)
{
    unsigned long *before = calloc(nbusy ? nbusy : 1, sizeof *before);
    for (int i = 0; i < nbusy; i++)
        before[i] = atomic_load(&busy[i].iterations);
    double deadline = now() + 60;
    for (;;) {
        int done = 0;
        for (int i = 0; i < nbusy; i++)
            done += atomic_load(&busy[i].iterations) > before[i] + 1 &&
                    atomic_load(&busy[i].last) == value;
        if (done == nbusy) {
            printf("expect %d ok\n", value);
            break;
        }
        if (now() > deadline) {
            printf("expect %d timeout (%d of %d)\n", value, done, nbusy);
            break;
        }
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
    free(before);
}

/* --- hammer: allocator and loader locks, a signal handler in the library ---- */
static const char *dl_path;
static atomic_ulong hammer_rounds, dl_errors, signals;

static void on_usr1(int sig)
{
    (void)sig;
    if (!consistent(ts_both()))
        atomic_fetch_add(&mixed, 1);
    atomic_fetch_add(&signals, 1);
}

static void *hammer_main(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    void *slots[16] = {0};
    while (!atomic_load(&stopping)) {
        for (int i = 0; i < 64; i++) {
            int k = rand_r(&seed) % 16;
            switch (rand_r(&seed) % 3) {
            case 0:
                free(slots[k]);
                slots[k] = malloc(1 + rand_r(&seed) % 4096);
                break;
            case 1:
                slots[k] = realloc(slots[k], 1 + rand_r(&seed) % 8192);
                break;
            default:
                free(slots[k]);
                slots[k] = NULL;
            }
        }
        void *handle = dlopen(dl_path, RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
            atomic_fetch_add(&dl_errors, 1);
            continue;
        }
        int (*value)(int) = (int (*)(int))dlsym(handle, "ts_dl_value");
        if (!value || value(1) != 2)
            atomic_fetch_add(&dl_errors, 1);
        dlclose(handle);
        atomic_fetch_add(&hammer_rounds, 1);
    }
    for (int k = 0; k < 16; k++)
        free(slots[k]);
    return NULL;
}

static void *signaller_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&stopping)) {
        kill(getpid(), SIGUSR1);
        struct timespec pause = {0, 100000};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

static void start_hammer(int n)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_usr1;
    action.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &action, NULL);
    for (int i = 0; i < n; i++)
        start_thread(hammer_main, (void *)(uintptr_t)(i + 1), "ts-hammer");
    start_thread(signaller_main, NULL, "ts-signaller");
}

/* --- blocked system calls ----------------------------------------------------- */
static atomic_ulong eintr, sleeps, short_sleeps;
static atomic_int futex_word, cond_flag;
static pthread_mutex_t cond_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int fifo_read_fd, fifo_poll_fd, listen_fd;

static void *read_main(void *arg)
{
    (void)arg;
    char c;
    ssize_t got;
    while ((got = read(fifo_read_fd, &c, 1)) < 0 && errno == EINTR)
        atomic_fetch_add(&eintr, 1);
    if (got == 1)
        printf("read ok %c\n", c);
    else
        printf("read failed %zd %s\n", got, strerror(errno));
    return NULL;
}

static void *poll_main(void *arg)
{
    (void)arg;
    struct pollfd fd = {fifo_poll_fd, POLLIN, 0};
    int ready;
    while ((ready = poll(&fd, 1, -1)) < 0 && errno == EINTR)
        atomic_fetch_add(&eintr, 1);
    printf("poll %s %d\n", ready == 1 && (fd.revents & POLLIN) ? "ok" : "failed", ready);
    return NULL;
}

static void *accept_main(void *arg)
{
    (void)arg;
    int fd;
    while ((fd = accept(listen_fd, NULL, NULL)) < 0 && errno == EINTR)
        atomic_fetch_add(&eintr, 1);
    printf("accept %s\n", fd >= 0 ? "ok" : strerror(errno));
    return NULL;
}

/* Sleeps of 200 ms, each measured: none may end early or fail with EINTR. */
static void *sleep_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&stopping)) {
        struct timespec want = {0, 200 * 1000 * 1000};
        double start = now();
        if (nanosleep(&want, NULL) != 0 && errno == EINTR)
            atomic_fetch_add(&eintr, 1);
        if (now() - start < 0.2)
            atomic_fetch_add(&short_sleeps, 1);
        atomic_fetch_add(&sleeps, 1);
    }
    return NULL;
}

static void *futex_main(void *arg)
{
    (void)arg;
    while (atomic_load(&futex_word) == 0) {
        long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
        if (r < 0 && errno == EINTR)
            atomic_fetch_add(&eintr, 1);
    }
    printf("futex ok\n");
    return NULL;
}

static void *cond_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&cond_lock);
    while (!atomic_load(&cond_flag))
        pthread_cond_wait(&cond, &cond_lock);
    pthread_mutex_unlock(&cond_lock);
    printf("cond ok\n");
    return NULL;
}

static void wake(void)
{
    atomic_store(&futex_word, 1);
    syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    pthread_mutex_lock(&cond_lock);
    atomic_store(&cond_flag, 1);
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&cond_lock);
}

static void start_syscalls(const char *fifo1, const char *fifo2, const char *socket_path)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    fifo_read_fd = open(fifo1, O_RDWR);     /* O_RDWR: the open does not wait for a writer */
    fifo_poll_fd = open(fifo2, O_RDWR);
    listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(address.sun_path, sizeof address.sun_path, "%s", socket_path);
    if (fifo_read_fd < 0 || fifo_poll_fd < 0 || listen_fd < 0 ||
        bind(listen_fd, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listen_fd, 1) != 0) {
        printf("syscalls setup failed: %s\n", strerror(errno));
        exit(2);
    }
    start_thread(read_main, NULL, "ts-read");
    start_thread(poll_main, NULL, "ts-poll");
    start_thread(accept_main, NULL, "ts-accept");
    start_thread(sleep_main, NULL, "ts-sleep");
    start_thread(futex_main, NULL, "ts-futex");
    start_thread(cond_main, NULL, "ts-cond");
}

/* --- registers ------------------------------------------------------------------ */
/* int hold_registers(atomic_int *go, const uint64_t pattern[96], uint32_t scratch[4])
 * Loads ymm0-15 (pattern[0..63]), the 128-byte red zone (pattern[64..79]),
 * rbx rbp r8-r10 r12-r15 (pattern[80..88]), the flags CF PF AF ZF SF OF DF and
 * MXCSR (scratch[1]); spins without touching flags or memory below %rsp until
 * *go; returns the number of values that changed. */
__asm__(
    ".text\n"
    ".globl hold_registers\n"
    ".type hold_registers, @function\n"
    "hold_registers:\n"
    "  pushq %rbx\n  pushq %rbp\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  stmxcsr 0(%rdx)\n"
    "  ldmxcsr 4(%rdx)\n"
    "  vmovdqu 0(%rsi), %ymm0\n  vmovdqu 32(%rsi), %ymm1\n  vmovdqu 64(%rsi), %ymm2\n"
    "  vmovdqu 96(%rsi), %ymm3\n  vmovdqu 128(%rsi), %ymm4\n  vmovdqu 160(%rsi), %ymm5\n"
    "  vmovdqu 192(%rsi), %ymm6\n  vmovdqu 224(%rsi), %ymm7\n  vmovdqu 256(%rsi), %ymm8\n"
    "  vmovdqu 288(%rsi), %ymm9\n  vmovdqu 320(%rsi), %ymm10\n  vmovdqu 352(%rsi), %ymm11\n"
    "  vmovdqu 384(%rsi), %ymm12\n  vmovdqu 416(%rsi), %ymm13\n  vmovdqu 448(%rsi), %ymm14\n"
    "  vmovdqu 480(%rsi), %ymm15\n"
    "  xorl %ecx, %ecx\n"
    "1: movq 512(%rsi,%rcx,8), %rax\n"
    "  movq %rax, -128(%rsp,%rcx,8)\n"
    "  incl %ecx\n  cmpl $16, %ecx\n  jne 1b\n"
    "  movq 640(%rsi), %rbx\n  movq 648(%rsi), %rbp\n  movq 656(%rsi), %r8\n"
    "  movq 664(%rsi), %r9\n  movq 672(%rsi), %r10\n  movq 680(%rsi), %r12\n"
    "  movq 688(%rsi), %r13\n  movq 696(%rsi), %r14\n  movq 704(%rsi), %r15\n"
    "  lock incl regs_ready(%rip)\n"
    /* every flag we check set, DF too; no pushf until the red zone is
     * checked: it would write into it */
    "  movb $0xd7, %ah\n  sahf\n"              /* SF ZF AF PF CF */
    "  std\n"
    "  movl $0x7fffffff, %eax\n  addl $1, %eax\n" /* OF (and SF, AF, PF) */
    "  movb $0xd7, %ah\n  sahf\n"              /* ZF and CF again, OF stays */
    "2: movl (%rdi), %ecx\n  jrcxz 2b\n"        /* mov and jrcxz leave the flags alone */
    "  lahf\n  seto %al\n  movzwl %ax, %edx\n"  /* edx = flags seen (scratch pointer lost) */
    "  xorl %r11d, %r11d\n"                    /* r11 = errors */
    "  xorl %ecx, %ecx\n"                      /* the red zone, before pushfq writes to it */
    "6: movq 512(%rsi,%rcx,8), %rax\n"
    "  cmpq %rax, -128(%rsp,%rcx,8)\n"
    "  je 7f\n  incl %r11d\n7:\n"
    "  incl %ecx\n  cmpl $16, %ecx\n  jne 6b\n"
    "  pushfq\n  popq %rax\n"                  /* DF: compares leave it alone */
    "  cld\n"
    "  btq $10, %rax\n  jc 3f\n  incl %r11d\n3:\n"
    "  cmpw $0xd701, %dx\n  je 4f\n  incl %r11d\n4:\n"
    "  cmpq 640(%rsi), %rbx\n  je 5f\n  incl %r11d\n5:\n"
    "  cmpq 648(%rsi), %rbp\n  je 5f\n  incl %r11d\n5:\n"
    "  cmpq 656(%rsi), %r8\n  je 5f\n  incl %r11d\n5:\n"
    "  cmpq 664(%rsi), %r9\n  je 5f\n  incl %r11d\n5:\n"
    "  cmpq 672(%rsi), %r10\n  je 5f\n  incl %r11d\n5:\n"
    "  cmpq 680(%rsi), %r12\n  je 5f\n  incl %r11d\n5:\n"
    "  cmpq 688(%rsi), %r13\n  je 5f\n  incl %r11d\n5:\n"
    "  cmpq 696(%rsi), %r14\n  je 5f\n  incl %r11d\n5:\n"
    "  cmpq 704(%rsi), %r15\n  je 5f\n  incl %r11d\n5:\n"
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "  vpcmpeqb (32*\\n)(%rsi), %ymm\\n, %ymm\\n\n"
    "  vpmovmskb %ymm\\n, %eax\n"
    "  cmpl $-1, %eax\n  je 8f\n  incl %r11d\n8:\n"
    ".endr\n"
    "  vzeroupper\n"
    "  movl %r11d, %eax\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbp\n  popq %rbx\n"
    "  ret\n"
    ".size hold_registers, .-hold_registers\n");

int hold_registers(atomic_int *go, const uint64_t *pattern, uint32_t *scratch);
atomic_int regs_ready;
static atomic_int regs_go;
static uint64_t regs_pattern[96];
static pthread_t *regs_threads;
static int nregs;

struct regs_result {
    uint32_t scratch[4];
    int errors;
};

static void *regs_main(void *arg)
{
    struct regs_result *result = arg;
    result->scratch[1] = 0x7f80 | 0x6000;   /* all exceptions masked, round toward zero */
    result->errors = hold_registers(&regs_go, regs_pattern, result->scratch);
    uint32_t seen;
    __asm__ volatile("stmxcsr %0" : "=m"(seen));
    if (seen != result->scratch[1])
        result->errors++;
    __asm__ volatile("ldmxcsr %0" : : "m"(result->scratch[0]));
    return NULL;
}

static struct regs_result *regs_results;

static void start_regs(int n)
{
    for (int i = 0; i < 96; i++)
        regs_pattern[i] = 0x0123456789abcdefULL * (uint64_t)(i + 3) ^ ((uint64_t)i << 56);
    nregs = n;
    regs_threads = calloc(n, sizeof *regs_threads);
    regs_results = calloc(n, sizeof *regs_results);
    for (int i = 0; i < n; i++)
        regs_threads[i] = start_thread(regs_main, &regs_results[i], "ts-regs");
}

static void check_regs(void)
{
    int errors = 0;
    atomic_store(&regs_go, 1);
    for (int i = 0; i < nregs; i++) {
        pthread_join(regs_threads[i], NULL);
        errors += regs_results[i].errors;
    }
    printf("regs errors=%d\n", errors);
}

/* --- threads coming and going ------------------------------------------------- */
static atomic_ulong churned;

static void *short_lived(void *arg)
{
    (void)arg;
    check_both();
    return NULL;
}

static void *churn_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&stopping)) {
        pthread_t threads[4];
        for (int i = 0; i < 4; i++)
            threads[i] = start_thread(short_lived, NULL, "ts-short");
        for (int i = 0; i < 4; i++)
            pthread_join(threads[i], NULL);
        atomic_fetch_add(&churned, 4);
    }
    return NULL;
}

/* --- hardening ------------------------------------------------------------------ */
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

static int install_wx_filter(void)
{
    enum { ARG2 = offsetof(struct seccomp_data, args[2]) };
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mprotect, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mmap, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pkey_mprotect, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG2),
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof code / sizeof code[0], code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    /* TSYNC: the ulp agent, started by the runtime's constructor, too */
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                        &program);
}

static void harden(void)
{
    int mdwe = prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0);
    int filter = install_wx_filter();
    printf("hardened mdwe=%d seccomp=%d\n", mdwe, filter);
}

/* A child (same hardening) asks for writable+executable memory. */
static void try_wx(void)
{
    pid_t child = fork();
    if (child == 0) {
        void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            _exit(3);
        _exit(mprotect(page, 4096, PROT_READ | PROT_WRITE | PROT_EXEC) == 0 ? 0 : 1);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (WIFSIGNALED(status))
        printf("wx refused signal=%d\n", WTERMSIG(status));
    else
        printf("wx %s\n", WEXITSTATUS(status) == 0 ? "allowed" : "refused errno");
}

/* The main thread waits uninterruptibly until the child exits: no ptrace
 * stop is possible meanwhile. */
static void do_vfork(void)
{
    pid_t child = vfork();
    if (child == 0) {
        char c;
        write(1, "vfork child\n", 12);
        while (read(0, &c, 1) == 1 && c != '\n')
            ;
        _exit(0);
    }
    waitpid(child, NULL, 0);
    printf("vfork done\n");
}

/* ------------------------------------------------------------------------------- */
int main(int argc, char **argv)
{
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    check_both();   /* the library registers with the runtime now */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "busy") == 0 && i + 1 < argc) {
            nbusy = atoi(argv[++i]);
            busy = calloc(nbusy ? nbusy : 1, sizeof *busy);
            for (int k = 0; k < nbusy; k++)
                start_thread(busy_main, &busy[k], "ts-busy");
        } else if (strcmp(argv[i], "blocked") == 0 && i + 1 < argc) {
            int n = atoi(argv[++i]);
            for (int k = 0; k < n; k++)
                start_thread(blocked_main, NULL, "ts-blocked");
        } else if (strcmp(argv[i], "hammer") == 0 && i + 2 < argc) {
            int n = atoi(argv[++i]);
            dl_path = argv[++i];
            start_hammer(n);
        } else if (strcmp(argv[i], "syscalls") == 0 && i + 3 < argc) {
            start_syscalls(argv[i + 1], argv[i + 2], argv[i + 3]);
            i += 3;
        } else if (strcmp(argv[i], "regs") == 0 && i + 1 < argc) {
            start_regs(atoi(argv[++i]));
        } else if (strcmp(argv[i], "churn") == 0) {
            start_thread(churn_main, NULL, "ts-churn");
        } else if (strcmp(argv[i], "hardened") == 0) {
            harden();
        } else {
            printf("unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "call", 4) == 0) {
            printf("both=%d\n", ts_both());
        } else if (strncmp(line, "stats", 5) == 0) {
            printf("mixed=%lu calls=%lu signals=%lu hammer=%lu dlerrors=%lu churned=%lu "
                   "sleeps=%lu short=%lu eintr=%lu\n",
                   atomic_load(&mixed), atomic_load(&calls), atomic_load(&signals),
                   atomic_load(&hammer_rounds), atomic_load(&dl_errors), atomic_load(&churned),
                   atomic_load(&sleeps), atomic_load(&short_sleeps), atomic_load(&eintr));
        } else if (strncmp(line, "expect ", 7) == 0) {
            expect(atoi(line + 7));
        } else if (strncmp(line, "regs-ready", 10) == 0) {
            printf("regs-ready %d\n", atomic_load(&regs_ready));
        } else if (strncmp(line, "regs-check", 10) == 0) {
            check_regs();
        } else if (strncmp(line, "wake", 4) == 0) {
            wake();
            printf("woken\n");
        } else if (strncmp(line, "wx", 2) == 0) {
            try_wx();
        } else if (strncmp(line, "vfork", 5) == 0) {
            do_vfork();
        } else {
            printf("unknown command\n");
        }
    }
    atomic_store(&stopping, 1);
    return 0;
}
