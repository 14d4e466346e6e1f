/* test_region.c - shm region create/open/unlink, header refusals, futex wait/wake; no leftovers. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "nf_err.h"
#include "notify.h"
#include "region.h"

/* Every name a test uses, so the last test can check none is left in /dev/shm. */
static char names[16][64];
static int n_names;

static const char *uniq_name(void)
{
    assert_true(n_names < 16);
    snprintf(names[n_names], sizeof(names[0]), "/nf-test-region-%d-%d", (int)getpid(), n_names);
    return names[n_names++];
}

static const uint64_t sizes[NF_SHM_NAREAS] = {
    [NF_SHM_TILE_POOL] = 3 * 4096 + 17, [NF_SHM_TILE_TABLE] = 100,   [NF_SHM_REQ_RING] = 0,
    [NF_SHM_COMPLETION] = 64,           [NF_SHM_ACTIVATIONS] = 5000, [NF_SHM_COUNTERS] = 8,
};

static void create_ok(struct nf_shm *s, const char *name)
{
    int rc = nf_shm_create(s, name, sizes);
    if (rc < 0)
        fail_msg("create %s: %s", name, s->err);
}

static void test_create_open(void **state)
{
    const char *name = uniq_name();
    struct nf_shm a, b;
    create_ok(&a, name);
    const struct nf_shm_header *h = a.base;
    assert_int_equal(h->major, NF_SHM_MAJOR);
    assert_int_equal(h->total_size, a.size);
    assert_int_equal(h->creator_pid, (uint32_t)getpid());
    uint64_t prev_end = sizeof(*h);
    for (int i = 0; i < NF_SHM_NAREAS; i++) {
        uint64_t sz;
        uint8_t *p = nf_shm_area(&a, i, &sz);
        assert_int_equal(sz, sizes[i]);
        assert_int_equal((uintptr_t)p % NF_SHM_ALIGN, 0);
        assert_true(h->areas[i].offset >= prev_end);
        prev_end = h->areas[i].offset + sz;
        memset(p, 0x40 + i, sz);
    }
    assert_true(prev_end <= a.size);
    assert_null(nf_shm_area(&a, NF_SHM_NAREAS, NULL));

    /* A second mapping sees the same bytes at its own address. */
    assert_int_equal(nf_shm_open(&b, name), 0);
    assert_ptr_not_equal(a.base, b.base);
    for (int i = 0; i < NF_SHM_NAREAS; i++) {
        uint64_t sz;
        uint8_t *p = nf_shm_area(&b, i, &sz);
        for (uint64_t j = 0; j < sz; j++)
            if (p[j] != 0x40 + i)
                fail_msg("area %d byte %llu", i, (unsigned long long)j);
    }
    struct nf_shm c;
    assert_int_equal(nf_shm_create(&c, name, sizes), -EEXIST);
    assert_int_equal(nf_shm_reserve(&a), 0);
    assert_int_equal(((uint8_t *)nf_shm_area(&b, NF_SHM_COUNTERS, NULL))[7], 0x40 + 5);
    nf_shm_close(&b);
    nf_shm_close(&a);
    assert_int_equal(nf_shm_unlink(name), 0);
    assert_int_equal(nf_shm_unlink(name), -ENOENT);
    assert_int_equal(nf_shm_open(&b, name), -ENOENT);
    assert_null(b.base);
}

static void test_bad_names(void **state)
{
    struct nf_shm s;
    assert_int_equal(nf_shm_create(&s, "noslash", sizes), -EINVAL);
    assert_non_null(strstr(s.err, "noslash"));
    assert_int_equal(nf_shm_create(&s, "/a/b", sizes), -EINVAL);
    assert_int_equal(nf_shm_create(&s, "/", sizes), -EINVAL);
    assert_int_equal(nf_shm_open(&s, NULL), -EINVAL);
    uint64_t huge[NF_SHM_NAREAS] = {[NF_SHM_TILE_POOL] = UINT64_MAX - 10};
    assert_int_equal(nf_shm_create(&s, "/nf-test-never-created", huge), NF_EOVERFLOW);
}

/* Creates a region, lets edit() damage its header, and checks open refuses it with code want
 * and a message containing field. */
static void refused(void (*edit)(struct nf_shm_header *, const char *), int want, const char *field)
{
    const char *name = uniq_name();
    struct nf_shm a, b;
    create_ok(&a, name);
    edit(a.base, name);
    int rc = nf_shm_open(&b, name);
    if (rc != want)
        fail_msg("open: %d (%s), expected %d; err \"%s\"", rc, nf_strerror(rc), want, b.err);
    assert_null(b.base);
    if (!strstr(b.err, field))
        fail_msg("message \"%s\" does not name %s", b.err, field);
    nf_shm_close(&a);
    assert_int_equal(nf_shm_unlink(name), 0);
}

static void edit_magic(struct nf_shm_header *h, const char *n)
{
    atomic_store(&h->magic, 0x1234);
}
static void edit_major(struct nf_shm_header *h, const char *n)
{
    h->major = NF_SHM_MAJOR + 1;
}
static void edit_minor(struct nf_shm_header *h, const char *n)
{
    h->minor = NF_SHM_MINOR + 7; /* accepted: see test_newer_minor */
}
static void edit_flags(struct nf_shm_header *h, const char *n)
{
    h->flags = 1ull << 5;
}
static void edit_total(struct nf_shm_header *h, const char *n)
{
    h->total_size += 4096;
}
static void edit_total_small(struct nf_shm_header *h, const char *n)
{
    h->total_size -= 4096;
}
static void edit_header_size(struct nf_shm_header *h, const char *n)
{
    h->header_size = 8;
}
static void edit_area(struct nf_shm_header *h, const char *n)
{
    h->areas[NF_SHM_COUNTERS].size = h->total_size;
}
static void edit_area_align(struct nf_shm_header *h, const char *n)
{
    h->areas[NF_SHM_TILE_POOL].offset += 8;
}
static void edit_n_areas(struct nf_shm_header *h, const char *n)
{
    h->n_areas = NF_SHM_AREA_MAX + 1;
}
/* A creator between shm_open and ftruncate: the object has no bytes yet. */
static void edit_unsized(struct nf_shm_header *h, const char *n)
{
    int fd = shm_open(n, O_RDWR, 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 0), 0);
    close(fd);
}
/* A creator between ftruncate and publishing the header: all zeros. */
static void edit_unpublished(struct nf_shm_header *h, const char *n)
{
    atomic_store(&h->magic, 0);
}
/* Shrinks the object itself under its header. */
static void edit_shrink(struct nf_shm_header *h, const char *n)
{
    int fd = shm_open(n, O_RDWR, 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 100), 0);
    close(fd);
}

static void test_refusals(void **state)
{
    refused(edit_magic, NF_EBADMAGIC, "magic");
    refused(edit_major, NF_EBADVERSION, "major");
    refused(edit_flags, NF_EBADVERSION, "flag");
    refused(edit_total, NF_ETRUNCATED, "total_size");
    refused(edit_total_small, NF_ECORRUPT, "total_size");
    refused(edit_header_size, NF_ECORRUPT, "header_size");
    refused(edit_area, NF_ECORRUPT, "area 5");
    refused(edit_area_align, NF_ECORRUPT, "area 0");
    refused(edit_n_areas, NF_ECORRUPT, "n_areas");
    refused(edit_shrink, NF_ETRUNCATED, "header");
    /* Still being created: attachers retry on -EAGAIN instead of giving up. */
    refused(edit_unsized, -EAGAIN, "still being created");
    refused(edit_unpublished, -EAGAIN, "still being initialized");
}

/* A newer minor version only appends, so it is accepted. */
static void test_newer_minor(void **state)
{
    const char *name = uniq_name();
    struct nf_shm a, b;
    create_ok(&a, name);
    edit_minor(a.base, name);
    assert_int_equal(nf_shm_open(&b, name), 0);
    nf_shm_close(&b);
    nf_shm_close(&a);
    assert_int_equal(nf_shm_unlink(name), 0);
}

static void test_notify_basic(void **state)
{
    struct nf_notify n;
    nf_notify_init(&n);
    uint32_t seen = nf_notify_seq(&n);
    /* Nobody wakes: the wait ends by timeout. */
    assert_int_equal(nf_notify_wait(&n, seen, 5), -ETIMEDOUT);
    nf_notify_wake(&n);
    assert_int_not_equal(nf_notify_seq(&n), seen);
    /* The sequence already moved: no sleep at all. */
    assert_int_equal(nf_notify_wait(&n, seen, -1), 0);
}

/* Waiter in a forked child, over a real region: it sleeps until the parent publishes a value
 * and wakes it, then answers through a second word. */
static void test_notify_processes(void **state)
{
    const char *name = uniq_name();
    struct nf_shm a;
    create_ok(&a, name);
    struct nf_notify *n = nf_shm_area(&a, NF_SHM_COMPLETION, NULL);
    nf_notify_init(&n[0]);
    nf_notify_init(&n[1]);
    _Atomic uint32_t *value = nf_shm_area(&a, NF_SHM_COUNTERS, NULL);
    atomic_store(value, 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct nf_shm c;
        if (nf_shm_open(&c, name) < 0)
            _exit(2);
        struct nf_notify *cn = nf_shm_area(&c, NF_SHM_COMPLETION, NULL);
        _Atomic uint32_t *cv = nf_shm_area(&c, NF_SHM_COUNTERS, NULL);
        for (uint32_t round = 1; round <= 50; round++) {
            uint32_t seen = nf_notify_seq(&cn[0]);
            while (atomic_load(cv) != round) {
                if (nf_notify_wait(&cn[0], seen, 10000) == -ETIMEDOUT)
                    _exit(3);
                seen = nf_notify_seq(&cn[0]);
            }
            atomic_store(cv, round + 1000);
            nf_notify_wake(&cn[1]);
        }
        _exit(0);
    }
    for (uint32_t round = 1; round <= 50; round++) {
        atomic_store(value, round);
        nf_notify_wake(&n[0]);
        uint32_t seen = nf_notify_seq(&n[1]);
        while (atomic_load(value) != round + 1000) {
            assert_int_not_equal(nf_notify_wait(&n[1], seen, 10000), -ETIMEDOUT);
            seen = nf_notify_seq(&n[1]);
        }
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    nf_shm_close(&a);
    assert_int_equal(nf_shm_unlink(name), 0);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Runs last: nothing this test created is left in /dev/shm. */
static void test_no_leftovers(void **state)
{
    char path[128];
    assert_true(n_names > 0);
    for (int i = 0; i < n_names; i++) {
        snprintf(path, sizeof(path), "/dev/shm%.63s", names[i]);
        if (access(path, F_OK) == 0)
            fail_msg("%s left behind", path);
    }
    assert_int_equal(access("/dev/shm/nf-test-never-created", F_OK), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_open),  cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_refusals),     cmocka_unit_test(test_newer_minor),
        cmocka_unit_test(test_notify_basic), cmocka_unit_test(test_notify_processes),
        cmocka_unit_test(test_no_leftovers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
