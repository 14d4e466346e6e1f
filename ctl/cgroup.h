/* cgroup.h - memory cgroups for nanoflowctl bench: create one with a limit, put processes in it,
 * read its peak usage and OOM kills, and remove it (cgroup v2 or v1). */
#ifndef NF_CGROUP_H
#define NF_CGROUP_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct nf_cgroup {
    int version;          /* 2 (unified) or 1 (memory controller hierarchy) */
    char path[PATH_MAX];  /* the cgroup's directory */
    char home[PATH_MAX];  /* our own cgroup: where processes left at removal are moved */
    uint64_t limit;       /* bytes written to memory.max / memory.limit_in_bytes */
    uint64_t polled_peak; /* largest usage seen by nf_cgroup_poll */
};

/* Creates the memory cgroup NAME with a limit of `limit` bytes: v2 when /sys/fs/cgroup is the
 * unified hierarchy with the memory controller (created under the root, memory enabled in its
 * cgroup.subtree_control), else v1 under our own /sys/fs/cgroup/memory cgroup (or its root).
 * Returns 0, or a negative errno code with a one-line reason in why (no cgroup left behind). */
int nf_cgroup_create(struct nf_cgroup *cg, const char *name, uint64_t limit, char *why,
                     size_t whylen);

/* Moves process pid (0: the caller, e.g. a child between fork and exec) into cg. 0 or -errno. */
int nf_cgroup_add(const struct nf_cgroup *cg, pid_t pid);

/* Current usage in bytes (page cache included). 0 or -errno. */
int nf_cgroup_current(const struct nf_cgroup *cg, uint64_t *bytes);

/* Samples the usage into cg->polled_peak (for kernels without a peak file). */
void nf_cgroup_poll(struct nf_cgroup *cg);

/* Peak usage in bytes: memory.peak (v2, kernel >= 5.19) or memory.max_usage_in_bytes (v1),
 * never below what nf_cgroup_poll saw. *from_kernel says whether the kernel's peak was read. */
int nf_cgroup_peak(const struct nf_cgroup *cg, uint64_t *bytes, bool *from_kernel);

/* Processes the OOM killer killed in cg (v2 memory.events oom_kill; v1 memory.oom_control
 * oom_kill), and how often the limit was hit (v2 "max" events, v1 memory.failcnt). */
int nf_cgroup_oom(const struct nf_cgroup *cg, uint64_t *oom_kills, uint64_t *limit_hits);

/* Number of processes still in cg (< 0: -errno). */
int nf_cgroup_nprocs(const struct nf_cgroup *cg);

/* Moves any process still in cg back to cg->home and removes the directory. 0 or -errno. */
int nf_cgroup_remove(struct nf_cgroup *cg);

#endif
