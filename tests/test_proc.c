/* test_proc.c - /proc readers: private memory (RssAnon) measured on the test process itself
 * grows with private pages and not with shared or file pages; another process's value; keys. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "nf_proc.h"

#define MIB   (1ull << 20)
#define CHUNK (64 * MIB)

/* Touches every page of p (n bytes) so it becomes resident. */
static void touch(volatile uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i += 4096)
        p[i] = (uint8_t)(i >> 12 | 1);
}

/* Reads every page of p (n bytes). */
static unsigned read_pages(const volatile uint8_t *p, size_t n)
{
    unsigned s = 0;
    for (size_t i = 0; i < n; i += 4096)
        s += p[i];
    return s;
}

/* Private anonymous pages count, in full, and leave the count when unmapped. */
static void test_private_pages(void **state)
{
    (void)state;
    uint64_t before = nf_proc_private_bytes(0);
    assert_true(before > 0);
    uint8_t *p = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    touch(p, CHUNK);
    uint64_t with = nf_proc_private_bytes(0);
    assert_true(with >= before + CHUNK - 4 * MIB);
    assert_true(with <= before + CHUNK + 16 * MIB);
    munmap(p, CHUNK);
    uint64_t after = nf_proc_private_bytes(0);
    assert_true(after + CHUNK - 4 * MIB <= with);
}

/* A shared mapping (as the stack's region) is resident but not private: it is counted once,
 * by its size, not in each process. */
static void test_shared_pages(void **state)
{
    (void)state;
    uint64_t before = nf_proc_private_bytes(0), rss0 = nf_proc_value(0, "status", "VmRSS");
    uint8_t *p = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    touch(p, CHUNK);
    uint64_t with = nf_proc_private_bytes(0), rss1 = nf_proc_value(0, "status", "VmRSS");
    assert_true(rss1 * 1024 >= rss0 * 1024 + CHUNK - 4 * MIB); /* resident, yes */
    assert_true(with < before + 4 * MIB);                      /* private, no */
    munmap(p, CHUNK);
}

/* File pages (code, libraries, a mapped model) are not private either. */
static void test_file_pages(void **state)
{
    (void)state;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_proc-%d", (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    unlink(path);
    static uint8_t buf[1 << 20];
    memset(buf, 7, sizeof(buf));
    for (int i = 0; i < 16; i++)
        assert_int_equal(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
    uint64_t before = nf_proc_private_bytes(0), file0 = nf_proc_value(0, "status", "RssFile");
    const uint8_t *p = mmap(NULL, 16 * MIB, PROT_READ, MAP_PRIVATE, fd, 0);
    assert_true(p != MAP_FAILED);
    assert_int_equal(read_pages(p, 16 * MIB), 7u * 16 * 256);
    uint64_t with = nf_proc_private_bytes(0), file1 = nf_proc_value(0, "status", "RssFile");
    assert_true(file1 * 1024 >= file0 * 1024 + 12 * MIB);
    assert_true(with < before + 2 * MIB);
    munmap((void *)p, 16 * MIB);
    close(fd);
}

/* Another process, by pid: a child holding 32 MiB of private pages. */
static void test_other_process(void **state)
{
    (void)state;
    int go[2], done[2];
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(done), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uint8_t *p =
            mmap(NULL, 32 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            _exit(1);
        touch(p, 32 * MIB);
        char c = 1;
        if (write(go[1], &c, 1) != 1 || read(done[0], &c, 1) != 1)
            _exit(1);
        _exit(0);
    }
    char c;
    assert_int_equal(read(go[0], &c, 1), 1);
    uint64_t v = nf_proc_private_bytes(pid);
    assert_true(v >= 32 * MIB - 2 * MIB);
    assert_true(nf_proc_value(pid, "status", "VmHWM") * 1024 >= 32 * MIB - 2 * MIB);
    assert_int_equal(write(done[1], &c, 1), 1);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* Reaped: no /proc entry, so unknown (0). */
    assert_int_equal(nf_proc_private_bytes(pid), 0);
    close(go[0]);
    close(go[1]);
    close(done[0]);
    close(done[1]);
}

/* Keys: whole names only, missing keys and files give 0. */
static void test_keys(void **state)
{
    (void)state;
    uint64_t hwm = nf_proc_value(0, "status", "VmHWM"), rss = nf_proc_value(0, "status", "VmRSS");
    assert_true(rss > 0 && hwm >= rss);
    assert_int_equal(nf_proc_value(0, "status", "VmHW"), 0); /* a prefix is not the key */
    assert_int_equal(nf_proc_value(0, "status", "NoSuchKey"), 0);
    assert_int_equal(nf_proc_value(0, "no-such-file", "VmRSS"), 0);
    assert_int_equal(nf_proc_value(0, "status", "Pid"), (uint64_t)getpid());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_private_pages), cmocka_unit_test(test_shared_pages),
        cmocka_unit_test(test_file_pages),    cmocka_unit_test(test_other_process),
        cmocka_unit_test(test_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
