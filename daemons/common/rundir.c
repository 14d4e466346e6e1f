/* rundir.c - the run directory of a stack: resolution, creation, file paths, pid files. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"
#include "nf_err.h"

int nf_rundir_resolve(const char *arg, char *out, size_t len)
{
    char tmp[PATH_MAX];
    const char *env;
    if (arg && *arg)
        snprintf(tmp, sizeof(tmp), "%s", arg);
    else if ((env = getenv("NANOFLOW_RUN_DIR")) && *env)
        snprintf(tmp, sizeof(tmp), "%s", env);
    else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
        snprintf(tmp, sizeof(tmp), "%s/nanoflow", env);
    else if (geteuid() == 0)
        snprintf(tmp, sizeof(tmp), "/run/nanoflow");
    else
        snprintf(tmp, sizeof(tmp), "/tmp/nanoflow-%u", (unsigned)getuid());
    /* Absolute, without trailing slashes: the shm name is a hash of this exact string, so
     * "d", "./d/" and "/abs/d" must all name the same stack. */
    char abs[PATH_MAX];
    if (tmp[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd)))
            return -errno;
        const char *rel = tmp;
        while (rel[0] == '.' && rel[1] == '/')
            rel += 2;
        if (!strcmp(rel, "."))
            rel = "";
        if ((size_t)snprintf(abs, sizeof(abs), "%s%s%s", cwd, *rel ? "/" : "", rel) >= sizeof(abs))
            return -ENAMETOOLONG;
    } else {
        snprintf(abs, sizeof(abs), "%s", tmp);
    }
    size_t n = strlen(abs);
    while (n > 1 && abs[n - 1] == '/')
        abs[--n] = '\0';
    /* Socket paths are dir/ROLE.sock and must fit sockaddr_un.sun_path (108 bytes). */
    if (n + sizeof("/predictor.sock") > 108)
        return -ENAMETOOLONG;
    if (n + 1 > len)
        return -ENAMETOOLONG;
    memcpy(out, abs, n + 1);
    return 0;
}

/* Describes who owns st for messages: "uid 1001 (alice)". */
static void owner_name(uid_t uid, char *out, size_t len)
{
    struct passwd pw, *res = NULL;
    char buf[1024];
    if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) == 0 && res)
        snprintf(out, len, "uid %u (%s)", (unsigned)uid, res->pw_name);
    else
        snprintf(out, len, "uid %u", (unsigned)uid);
}

/* True when only root could have made the symlink at path (st): a root-owned link in a
 * root-owned directory nobody else may write to, as /var/run -> /run is. */
static bool system_symlink(const char *path, const struct stat *st)
{
    if (st->st_uid != 0)
        return false;
    char parent[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s", path);
    char *slash = strrchr(parent, '/');
    if (!slash)
        return false;
    if (slash == parent)
        slash[1] = '\0';
    else
        *slash = '\0';
    struct stat ps;
    return lstat(parent, &ps) == 0 && S_ISDIR(ps.st_mode) && ps.st_uid == 0 &&
           !(ps.st_mode & (S_IWGRP | S_IWOTH));
}

/* Checks one existing path component: p is a directory (a symlink only when only root could
 * have made it), owned by root or us, and not writable by others unless sticky; the run
 * directory itself (last) must not be group- or world-writable at all. Returns 0, 1 for a
 * system symlink the caller must resolve, or -EPERM/-ENOTDIR with the reason in err. */
static int check_component(const char *p, const struct stat *st, bool last, char *err,
                           size_t errlen)
{
    char who[96];
    uid_t me = geteuid();
    if (S_ISLNK(st->st_mode)) {
        if (system_symlink(p, st))
            return 1;
        owner_name(st->st_uid, who, sizeof(who));
        return nf_errf(err, errlen, -EPERM,
                       "%s is a symbolic link (owned by %s); a run directory path must not go "
                       "through links others could have made",
                       p, who);
    }
    if (!S_ISDIR(st->st_mode))
        return nf_errf(err, errlen, -ENOTDIR, "%s is not a directory", p);
    if (st->st_uid != me && st->st_uid != 0) {
        owner_name(st->st_uid, who, sizeof(who));
        return nf_errf(err, errlen, -EPERM, "%s is owned by %s, expected uid %u or root", p, who,
                       (unsigned)me);
    }
    mode_t w = st->st_mode & (S_IWGRP | S_IWOTH);
    if (w && (last || !(st->st_mode & S_ISVTX)))
        return nf_errf(err, errlen, -EPERM, "%s is writable by %s (mode %04o)%s", p,
                       (w & S_IWOTH) ? "everyone" : "its group", (unsigned)(st->st_mode & 07777),
                       last ? "" : " and not sticky");
    return 0;
}

/* Walks every component of the absolute path dir from "/" down, checking each with
 * check_component; with create, missing components are made (0700). Returns 0, -ENOENT
 * (without create) when a component is missing and everything above it is sound, or a
 * negative code with err set. */
static int walk(const char *dir, bool create, int depth, char *err, size_t errlen)
{
    char p[PATH_MAX];
    if (dir[0] != '/' || snprintf(p, sizeof(p), "%s", dir) >= (int)sizeof(p))
        return nf_errf(err, errlen, -ENAMETOOLONG, "run directory path unusable: %s", dir);
    size_t n = strlen(p);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        if (p[i - 1] == '/' && i > 1)
            continue; /* "//" */
        char save = p[i];
        p[i] = '\0';
        bool last = save == '\0';
        struct stat st;
        if (lstat(p, &st) < 0) {
            int e = errno;
            if (e == ENOENT && create && mkdir(p, 0700) == 0 && lstat(p, &st) == 0) {
                /* made by us just now: checked below like any other */
            } else if (e == ENOENT && !create) {
                return -ENOENT;
            } else {
                return nf_errf(err, errlen, -e, "cannot %s %s: %s",
                               e == ENOENT ? "create" : "access", p, strerror(e));
            }
        }
        int rc = check_component(p, &st, last, err, errlen);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            /* A system symlink: go on from where it leads (checked in full, links and all). */
            char real[PATH_MAX], rest[PATH_MAX];
            if (depth >= 8 || !realpath(p, real))
                return nf_errf(err, errlen, -ELOOP, "cannot resolve %s", p);
            p[i] = save;
            if (snprintf(rest, sizeof(rest), "%s%s", real, p + i) >= (int)sizeof(rest))
                return nf_errf(err, errlen, -ENAMETOOLONG, "run directory path too long: %s", dir);
            return walk(rest, create, depth + 1, err, errlen);
        }
        p[i] = save;
    }
    return 0;
}

int nf_rundir_check(const char *dir, char *err, size_t errlen)
{
    err[0] = '\0';
    return walk(dir, false, 0, err, errlen);
}

int nf_rundir_create(const char *dir, char *err, size_t errlen)
{
    err[0] = '\0';
    int rc = walk(dir, true, 0, err, errlen);
    if (rc < 0)
        return rc;
    /* The directory itself: ours (not root's, unless we are root) and closed to others. */
    struct stat st;
    if (stat(dir, &st) < 0)
        return nf_errf(err, errlen, -errno, "cannot stat run directory %s: %s", dir,
                       strerror(errno));
    if (st.st_uid != geteuid()) {
        char who[96];
        owner_name(st.st_uid, who, sizeof(who));
        return nf_errf(err, errlen, -EPERM, "run directory %s is owned by %s, expected uid %u", dir,
                       who, (unsigned)geteuid());
    }
    if (st.st_mode & 077)
        return nf_errf(err, errlen, -EPERM,
                       "run directory %s has mode %04o, expected 0700 (not accessible to "
                       "others)",
                       dir, (unsigned)(st.st_mode & 0777));
    return 0;
}

void nf_rundir_path(const char *dir, const char *role, const char *suffix, char *out, size_t len)
{
    snprintf(out, len, "%s/%s.%s", dir, role, suffix);
}

void nf_rundir_shm_name(const char *dir, char *out, size_t len)
{
    /* FNV-1a 64: stable across processes and builds, which is all the name needs. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *s = (const unsigned char *)dir; *s; s++) {
        h ^= *s;
        h *= 0x100000001b3ull;
    }
    snprintf(out, len, "/nanoflow-%016llx", (unsigned long long)h);
}

void nf_rundir_kv_path(const char *dir, const char *kv_dir, char *out, size_t len)
{
    char name[64];
    nf_rundir_shm_name(dir, name, sizeof(name));
    snprintf(out, len, "%s/%s.kv", kv_dir ? kv_dir : dir, name + 1); /* (name without '/') */
}

/* True when pid names a live process that is not a zombie. */
static int pid_alive(pid_t pid)
{
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) < 0 && errno != EPERM)
        return 0;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1; /* no /proc: trust kill() */
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'))
        return 0;
    return 1;
}

static pid_t pidfile_pid(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long v = 0;
    if (fscanf(f, "%ld", &v) != 1 || v <= 0 || v > INT_MAX)
        v = 0;
    fclose(f);
    return (pid_t)v;
}

int nf_pidfile_create(const char *dir, const char *role)
{
    char path[PATH_MAX];
    nf_rundir_path(dir, role, "pid", path, sizeof(path));
    for (int attempt = 0; attempt < 3; attempt++) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char buf[32];
            int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
            ssize_t w = write(fd, buf, (size_t)n);
            int e = errno;
            close(fd);
            if (w != n) {
                unlink(path);
                return w < 0 ? -e : -EIO;
            }
            return 0;
        }
        if (errno != EEXIST)
            return -errno;
        pid_t old = pidfile_pid(path);
        if (old == getpid())
            return 0;
        if (old > 0 && pid_alive(old))
            return -EEXIST;
        /* Stale (dead pid, or a file cut short by a crash): remove and retry. */
        if (unlink(path) < 0 && errno != ENOENT)
            return -errno;
    }
    return -EEXIST;
}

int nf_pidfile_read(const char *dir, const char *role)
{
    char path[PATH_MAX];
    nf_rundir_path(dir, role, "pid", path, sizeof(path));
    pid_t pid = pidfile_pid(path);
    return pid > 0 && pid_alive(pid) ? (int)pid : 0;
}

void nf_pidfile_remove(const char *dir, const char *role)
{
    char path[PATH_MAX];
    nf_rundir_path(dir, role, "pid", path, sizeof(path));
    unlink(path);
}

int nf_pid_is_daemon(int pid, const char *role, char *err, size_t errlen)
{
    char path[64], exe[PATH_MAX];
    snprintf(path, sizeof(path), "/proc/%d/exe", pid);
    ssize_t n = readlink(path, exe, sizeof(exe) - 1);
    if (n < 0)
        return nf_errf(err, errlen, -errno, "cannot read %s: %s", path, strerror(errno));
    exe[n] = '\0';
    /* A daemon whose binary was rebuilt under it still is that daemon. */
    static const char deleted[] = " (deleted)";
    size_t l = (size_t)n;
    if (l > sizeof(deleted) - 1 && !strcmp(exe + l - (sizeof(deleted) - 1), deleted))
        exe[l - (sizeof(deleted) - 1)] = '\0';
    const char *base = strrchr(exe, '/');
    base = base ? base + 1 : exe;
    char want[64];
    snprintf(want, sizeof(want), "nanoflow-%s", role);
    if (strcmp(base, want))
        return nf_errf(err, errlen, -ESRCH, "pid %d is %s, not %s", pid, exe, want);
    return 0;
}
