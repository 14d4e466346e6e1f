/* nf_proc.h - what /proc says about a process: its private memory, and any "Key: N" line of
 * /proc/PID/status or /proc/PID/io (peak RSS, bytes read from disk). */
#ifndef NF_PROC_H
#define NF_PROC_H

#include <stdint.h>
#include <sys/types.h>

/* The value of the line "key: N" of /proc/PID/file (pid 0: this process), or 0 when the file or
 * the key is missing. N is returned as written: kB for status's Vm and Rss lines, bytes for io's
 * read_bytes. */
uint64_t nf_proc_value(pid_t pid, const char *file, const char *key);

/* Private memory of process pid (0: this process), in bytes: RssAnon of /proc/PID/status, or 0
 * when unknown. This is the one definition of "private memory" NanoFlow uses: each daemon
 * publishes it as its mem_bytes gauge, the stack's held RAM is the shared region plus the sum of
 * the three, and the predictor sizes its predictor cache from it.
 *
 * Why RssAnon: it counts the resident pages only this process's memory holds (heap, KV cache,
 * scratch, thread stacks) and nothing that is counted elsewhere. The shared region (shmem pages,
 * RssShmem) is counted once, by region size, and code and libraries (RssFile: the same page-cache
 * pages in all three daemons) are what the budget's fixed per-process allowance
 * (NF_STACK_PROC_BYTES) covers, so adding either per process would count them three times.
 * Private_Clean + Private_Dirty of smaps_rollup was not chosen: it counts a shared-region page as
 * private until a second process touches it, and it walks the page tables of the whole mapping
 * (slow with a pool of gigabytes). It is resident minus shared of /proc/PID/statm, which two
 * daemons read before. */
uint64_t nf_proc_private_bytes(pid_t pid);

#endif
