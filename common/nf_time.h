/* nf_time.h - the monotonic clock and short sleeps, as every command and daemon uses them. */
#ifndef NF_TIME_H
#define NF_TIME_H

#include <stdint.h>
#include <time.h>

/* Seconds on CLOCK_MONOTONIC (for intervals only). */
static inline double nf_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Nanoseconds on CLOCK_MONOTONIC. */
static inline uint64_t nf_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Milliseconds on CLOCK_MONOTONIC. */
static inline int64_t nf_now_ms(void)
{
    return (int64_t)(nf_now_ns() / 1000000u);
}

/* The CLOCK_MONOTONIC time ms milliseconds from now, as the absolute deadline of a
 * pthread_cond_timedwait on a condition variable whose clock attribute is CLOCK_MONOTONIC. */
static inline struct timespec nf_deadline_ms(int64_t ms)
{
    uint64_t ns = nf_now_ns() + (uint64_t)ms * 1000000u;
    struct timespec t = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    return t;
}

/* Sleeps ms milliseconds (a signal may end it early). */
static inline void nf_sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

#endif
