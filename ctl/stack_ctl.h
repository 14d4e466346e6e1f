/* stack_ctl.h - what nanoflowctl's stack commands (up, down, status, stats, gen) share. */
#ifndef NF_STACK_CTL_H
#define NF_STACK_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"

#define NF_N_ROLES 3
/* Start order: fetcher creates the region, the others attach. `down` walks it backwards. */
extern const char *const nf_stack_roles[NF_N_ROLES];

/* Resolves the run directory (--run-dir value or NULL) into dir and checks it can be trusted
 * (nf_rundir_check; a missing one passes); prints one line naming what is wrong and returns -1
 * on failure. */
int nf_ctl_rundir(const char *cmd, const char *arg, char *dir, size_t len);

/* True when any daemon of the stack in dir has a live pid or a socket file exists. */
bool nf_ctl_stack_present(const char *dir);

/* Connects to dir/ROLE.sock (Hello exchanged). Returns the fd or a negative code (err set). */
int nf_ctl_connect(const char *dir, const char *role, int timeout_ms, char *err, size_t errlen);

/* Sends req with a fresh request id and returns in *reply the first message carrying that id
 * (free with nf_envelope_free). Returns 0, or a negative code (-ETIMEDOUT, -ECONNRESET when the
 * daemon closed the connection). */
int nf_ctl_request(int fd, nf_envelope *req, nf_envelope **reply, int timeout_ms);

/* The pid of role's daemon that may be signalled: the pid in dir/ROLE.pid, only when it is the
 * pid listening on dir/ROLE.sock (SO_PEERCRED, our uid or root; the daemon need not answer)
 * and runs the nanoflow-ROLE binary. Returns that pid, 0 when there is no live pid in the file
 * (why empty), or -ESRCH with why saying what did not match (nothing may be signalled then). */
int nf_ctl_daemon_pid(const char *dir, const char *role, char *why, size_t whylen);

/* The daemons of the stack in dir that died (enum nf_ready_bit; 0 when none did or there is no
 * region to tell), read from the liveness records in the region (daemons/common/live.c). With
 * one dead, msg gets "the ROLE (pid N) died: restart ..." for the first and pids (may be NULL)
 * the recorded pid of each daemon, in nf_stack_roles order. */
unsigned nf_ctl_stack_dead(const char *dir, char *msg, size_t len, int pids[NF_N_ROLES]);

/* What the plan of the stack in dir gave (its region's config): context length, prompt
 * ubatch (NF_STACK_UBATCH for a region made before the config recorded it), sequences and
 * pool bytes. Returns 0, or a negative code when there is no region to read. */
struct nf_ctl_plan_info {
    uint32_t n_ctx, n_ubatch, n_seq;
    uint64_t pool_bytes, ram_budget;
};
int nf_ctl_stack_plan_info(const char *dir, struct nf_ctl_plan_info *out);

/* Fresh request ids for this process. */
unsigned long long nf_ctl_next_id(void);

/* Human-readable bytes ("512.0 MiB") into buf; returns buf. */
const char *nf_ctl_fmt_size(char *buf, size_t len, unsigned long long bytes);

/* Removes dir's sockets, pid files and stack.conf (logs stay) and unlinks the stack's shm
 * object if it still exists. */
void nf_ctl_cleanup_rundir(const char *dir);

#endif
