/* For test programs whose hot threads count their rounds in done[]: wait,
 * under LOCK, until each of N threads has completed MORE rounds more (so
 * each ran one that started after the call), 20 s at most.  Returns 0 with
 * LOCK held, or -1 (LOCK released) on timeout. */
#ifndef TEST_PROGRESS_H
#define TEST_PROGRESS_H

#include <pthread.h>
#include <time.h>

static int wait_rounds(pthread_mutex_t *lock, pthread_cond_t *progress, const long *done,
                       int n, long more)
{
    long target[64];
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    pthread_mutex_lock(lock);
    for (int i = 0; i < n && i < 64; i++)
        target[i] = done[i] + more;
    for (int i = 0; i < n && i < 64; i++)
        while (done[i] < target[i])
            if (pthread_cond_timedwait(progress, lock, &deadline) != 0) {
                pthread_mutex_unlock(lock);
                return -1;
            }
    return 0;
}
#endif
