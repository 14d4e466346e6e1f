/* cgroup.c - memory cgroup creation, accounting and removal (v2 and v1) for nanoflowctl bench. */
#include "cgroup.h"
#include "nf_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NF_CG_ROOT    "/sys/fs/cgroup"
#define NF_CG_V1_ROOT "/sys/fs/cgroup/memory"

/* Writes s to dir/file. 0 or -errno. */
static int cg_write(const char *dir, const char *file, const char *s)
{
    char p[PATH_MAX];
    if (!nf_pathf(p, sizeof(p), "%s/%s", dir, file))
        return -ENAMETOOLONG;
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t n = strlen(s);
    ssize_t w = write(fd, s, n);
    int rc = w == (ssize_t)n ? 0 : w < 0 ? -errno : -EIO;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* Reads dir/file (up to len - 1 bytes, NUL-terminated). Returns bytes read or -errno. */
static ssize_t cg_read(const char *dir, const char *file, char *buf, size_t len)
{
    char p[PATH_MAX];
    if (!nf_pathf(p, sizeof(p), "%s/%s", dir, file))
        return -ENAMETOOLONG;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t off = 0;
    while (off + 1 < len) {
        ssize_t r = read(fd, buf + off, len - 1 - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        off += (size_t)r;
    }
    close(fd);
    buf[off] = '\0';
    return (ssize_t)off;
}

static int cg_read_u64(const char *dir, const char *file, uint64_t *out)
{
    char buf[64];
    ssize_t n = cg_read(dir, file, buf, sizeof(buf));
    if (n < 0)
        return (int)n;
    if (!strncmp(buf, "max", 3)) {
        *out = UINT64_MAX;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (end == buf || errno)
        return -EINVAL;
    *out = v;
    return 0;
}

/* The value of "key N" in a flat keyed file (memory.events, memory.oom_control). */
static int cg_read_key(const char *dir, const char *file, const char *key, uint64_t *out)
{
    char buf[4096];
    ssize_t n = cg_read(dir, file, buf, sizeof(buf));
    if (n < 0)
        return (int)n;
    size_t kl = strlen(key);
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!strncmp(line, key, kl) && line[kl] == ' ') {
            *out = strtoull(line + kl + 1, NULL, 10);
            return 0;
        }
        line = nl ? nl + 1 : NULL;
    }
    return -ENOENT;
}

/* Our own cgroup path for the hierarchy whose /proc/self/cgroup line matches: v2 "0::PATH",
 * v1 "N:...memory...:PATH". Writes "/" when not found. */
static void own_cgroup(int version, char *out, size_t len)
{
    snprintf(out, len, "/");
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return;
    char line[PATH_MAX + 64];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        const char *ctrls = c1 + 1, *path = c2 + 1;
        bool match = false;
        if (version == 2) {
            match = !strncmp(line, "0:", 2) && !*ctrls;
        } else {
            /* The controller list is comma-separated: look for "memory" as a whole word. */
            char tmp[256];
            snprintf(tmp, sizeof(tmp), "%s", ctrls);
            for (char *s = NULL, *t = strtok_r(tmp, ",", &s); t; t = strtok_r(NULL, ",", &s))
                match |= !strcmp(t, "memory");
        }
        if (match) {
            snprintf(out, len, "%s", *path ? path : "/");
            break;
        }
    }
    fclose(f);
}

static bool has_word(const char *list, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = list; (p = strstr(p, word)); p += wl)
        if ((p == list || p[-1] == ' ' || p[-1] == '+') &&
            (p[wl] == '\0' || p[wl] == ' ' || p[wl] == '\n'))
            return true;
    return false;
}

static int create_v2(struct nf_cgroup *cg, const char *name, char *why, size_t whylen)
{
    char buf[512], own[PATH_MAX];
    if (cg_read(NF_CG_ROOT, "cgroup.subtree_control", buf, sizeof(buf)) >= 0 &&
        !has_word(buf, "memory")) {
        int rc = cg_write(NF_CG_ROOT, "cgroup.subtree_control", "+memory");
        if (rc < 0) {
            snprintf(why, whylen,
                     "cannot enable the memory controller in %s/cgroup.subtree_control: %s",
                     NF_CG_ROOT, strerror(-rc));
            return rc;
        }
    }
    own_cgroup(2, own, sizeof(own));
    if (!nf_pathf(cg->home, sizeof(cg->home), "%s%s", NF_CG_ROOT, strcmp(own, "/") ? own : "") ||
        !nf_pathf(cg->path, sizeof(cg->path), "%s/%s", NF_CG_ROOT, name))
        return -ENAMETOOLONG;
    if (mkdir(cg->path, 0755) < 0) {
        int e = errno;
        snprintf(why, whylen, "cannot create %s: %s", cg->path, strerror(e));
        return -e;
    }
    char v[32];
    snprintf(v, sizeof(v), "%llu", (unsigned long long)cg->limit);
    int rc = cg_write(cg->path, "memory.max", v);
    if (rc == 0)
        cg_write(cg->path, "memory.swap.max", "0"); /* absent without swap accounting */
    if (rc < 0) {
        snprintf(why, whylen, "cannot write %s/memory.max: %s", cg->path, strerror(-rc));
        rmdir(cg->path);
    }
    return rc;
}

static int create_v1(struct nf_cgroup *cg, const char *name, char *why, size_t whylen)
{
    char own[PATH_MAX];
    own_cgroup(1, own, sizeof(own));
    if (!strcmp(own, "/"))
        own[0] = '\0';
    if (!nf_pathf(cg->home, sizeof(cg->home), "%s%s", NF_CG_V1_ROOT, own))
        return -ENAMETOOLONG;
    /* Under our own cgroup first (the limits above us still apply), else under the root. */
    const char *bases[2] = {cg->home, NF_CG_V1_ROOT};
    int e = 0;
    for (int i = 0; i < 2; i++) {
        if (!nf_pathf(cg->path, sizeof(cg->path), "%s/%s", bases[i], name))
            return -ENAMETOOLONG;
        if (mkdir(cg->path, 0755) == 0) {
            e = 0;
            break;
        }
        e = errno;
    }
    if (e) {
        snprintf(why, whylen, "cannot create %s: %s", cg->path, strerror(e));
        return -e;
    }
    char v[32];
    snprintf(v, sizeof(v), "%llu", (unsigned long long)cg->limit);
    int rc = cg_write(cg->path, "memory.limit_in_bytes", v);
    if (rc == 0)
        cg_write(cg->path, "memory.memsw.limit_in_bytes", v); /* absent without swap accounting */
    if (rc < 0) {
        snprintf(why, whylen, "cannot write %s/memory.limit_in_bytes: %s", cg->path, strerror(-rc));
        rmdir(cg->path);
    }
    return rc;
}

int nf_cgroup_create(struct nf_cgroup *cg, const char *name, uint64_t limit, char *why,
                     size_t whylen)
{
    memset(cg, 0, sizeof(*cg));
    cg->limit = limit;
    if (!name || !*name || strchr(name, '/')) {
        snprintf(why, whylen, "bad cgroup name '%s'", name ? name : "");
        return -EINVAL;
    }
    char buf[512];
    if (cg_read(NF_CG_ROOT, "cgroup.controllers", buf, sizeof(buf)) >= 0 &&
        has_word(buf, "memory")) {
        cg->version = 2;
        return create_v2(cg, name, why, whylen);
    }
    struct stat st;
    if (stat(NF_CG_V1_ROOT "/cgroup.procs", &st) == 0) {
        cg->version = 1;
        return create_v1(cg, name, why, whylen);
    }
    snprintf(why, whylen,
             "no memory cgroup controller: neither %s/cgroup.controllers lists memory (v2) nor "
             "is %s mounted (v1)",
             NF_CG_ROOT, NF_CG_V1_ROOT);
    return -ENOENT;
}

int nf_cgroup_add(const struct nf_cgroup *cg, pid_t pid)
{
    char v[32];
    snprintf(v, sizeof(v), "%d", pid ? (int)pid : (int)getpid());
    return cg_write(cg->path, "cgroup.procs", v);
}

int nf_cgroup_current(const struct nf_cgroup *cg, uint64_t *bytes)
{
    return cg_read_u64(cg->path, cg->version == 2 ? "memory.current" : "memory.usage_in_bytes",
                       bytes);
}

void nf_cgroup_poll(struct nf_cgroup *cg)
{
    uint64_t cur;
    if (nf_cgroup_current(cg, &cur) == 0 && cur > cg->polled_peak)
        cg->polled_peak = cur;
}

int nf_cgroup_peak(const struct nf_cgroup *cg, uint64_t *bytes, bool *from_kernel)
{
    uint64_t v = 0;
    int rc =
        cg_read_u64(cg->path, cg->version == 2 ? "memory.peak" : "memory.max_usage_in_bytes", &v);
    *from_kernel = rc == 0;
    if (rc < 0)
        v = 0;
    *bytes = v > cg->polled_peak ? v : cg->polled_peak;
    return rc == 0 || cg->polled_peak ? 0 : rc;
}

int nf_cgroup_oom(const struct nf_cgroup *cg, uint64_t *oom_kills, uint64_t *limit_hits)
{
    *oom_kills = *limit_hits = 0;
    if (cg->version == 2) {
        int rc = cg_read_key(cg->path, "memory.events", "oom_kill", oom_kills);
        cg_read_key(cg->path, "memory.events", "max", limit_hits);
        return rc;
    }
    cg_read_u64(cg->path, "memory.failcnt", limit_hits);
    return cg_read_key(cg->path, "memory.oom_control", "oom_kill", oom_kills);
}

int nf_cgroup_nprocs(const struct nf_cgroup *cg)
{
    char buf[4096];
    ssize_t n = cg_read(cg->path, "cgroup.procs", buf, sizeof(buf));
    if (n < 0)
        return (int)n;
    int count = 0;
    for (char *p = buf; *p; p++)
        count += *p == '\n';
    return count;
}

int nf_cgroup_remove(struct nf_cgroup *cg)
{
    if (!cg->path[0])
        return 0;
    /* Processes still inside (none normally) go back to our own cgroup; a cgroup with
     * processes cannot be removed. Exiting processes may linger briefly: retry for ~2 s. */
    int rc = 0;
    for (int attempt = 0; attempt < 40; attempt++) {
        char buf[4096];
        if (cg_read(cg->path, "cgroup.procs", buf, sizeof(buf)) > 0) {
            for (char *s = NULL, *t = strtok_r(buf, "\n", &s); t; t = strtok_r(NULL, "\n", &s))
                cg_write(cg->home, "cgroup.procs", t);
        }
        if (rmdir(cg->path) == 0 || errno == ENOENT) {
            cg->path[0] = '\0';
            return 0;
        }
        rc = -errno;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return rc;
}
