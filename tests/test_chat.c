/* test_chat.c - chat templates against llama.cpp's own renderings (tests/data/chat/): every
 * template text and built-in name, every conversation, with and without the generation prompt,
 * byte for byte; the detected family; refusals that name the template. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "chat.h"
#include "nf_file.h"

#define DATA     NF_SOURCE_DIR "/tests/data/chat"
#define MAX_MSGS 16

/* A conversation file: one message a line, ROLE<TAB>CONTENT, CONTENT with \n \t \r \\ escapes
 * (the format tests/golden/tools/chat_render.cpp reads). */
struct conv {
    char *text; /* the file, split and unescaped in place */
    struct nf_chat_msg msgs[MAX_MSGS];
    int n;
};

static void unescape(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s != '\\' || !s[1]) {
            *o++ = *s;
            continue;
        }
        s++;
        *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s == 'r' ? '\r' : *s;
    }
    *o = '\0';
}

static void conv_load(struct conv *c, const char *rel)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", DATA, rel);
    size_t len;
    c->text = nf_read_file(path, &len);
    assert_non_null(c->text);
    c->n = 0;
    for (char *line = c->text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *tab = strchr(line, '\t');
        if (!tab)
            continue;
        *tab = '\0';
        unescape(tab + 1);
        assert_true(c->n < MAX_MSGS);
        c->msgs[c->n].role = line;
        c->msgs[c->n].content = tab + 1;
        c->n++;
    }
}

/* Returns the template text of a cases.tsv entry: a file's contents, or the NAME of "name:NAME"
 * (malloc'd either way). */
static char *template_load(const char *entry)
{
    if (strncmp(entry, "name:", 5) == 0)
        return strdup(entry + 5);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", DATA, entry);
    size_t len;
    char *t = nf_read_file(path, &len);
    assert_non_null(t);
    return t;
}

/* Every line of cases.tsv: TEMPLATE CONVERSATION ADD_ASS FAMILY EXPECTED. FAMILY is the built-in
 * name whose renderings equal llama.cpp's for that template, "-" for a family llama.cpp renders
 * and NanoFlow does not, "refused" when llama.cpp refuses the template too. */
static void test_cases(void **state)
{
    (void)state;
    size_t len;
    char *tsv = nf_read_file(DATA "/cases.tsv", &len);
    assert_non_null(tsv);
    int n_render = 0, n_refused = 0, n_failed = 0;
    for (char *line = tsv, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (line[0] == '#')
            continue;
        char *f[5];
        for (int i = 0; i < 5; i++) {
            f[i] = strsep(&line, "\t");
            assert_non_null(f[i]);
        }
        char *tmpl = template_load(f[0]);
        const char *family = f[3];
        const char *detected = nf_chat_detect(tmpl);
        char err[512] = "";
        char *out = NULL;
        if (strcmp(family, "refused") == 0 || strcmp(family, "-") == 0) {
            struct nf_chat_msg m = {.role = "user", .content = "Hello"};
            assert_null(detected);
            int rc = nf_chat_render(tmpl, &m, 1, true, NULL, NULL, &out, err, sizeof(err));
            assert_true(rc < 0);
            assert_null(out);
            assert_non_null(strstr(err, "--chat-template NAME"));
            n_refused++;
            free(tmpl);
            continue;
        }
        struct conv c;
        conv_load(&c, f[1]);
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", DATA, f[4]);
        size_t want_len;
        char *want = nf_read_file(path, &want_len);
        assert_non_null(want);
        int rc = nf_chat_render(tmpl, c.msgs, c.n, atoi(f[2]) != 0, "<s>", "</s>", &out, err,
                                sizeof(err));
        if (rc != 0 || !detected || strcmp(detected, family) != 0 || strlen(out) != want_len ||
            memcmp(out, want, want_len) != 0) {
            print_error("%s %s add_ass=%s: family %s, detected %s, rc %d %s\n--- want\n%s\n--- "
                        "got\n%s\n",
                        f[0], f[1], f[2], family, detected ? detected : "(none)", rc, err, want,
                        out ? out : "(none)");
            n_failed++;
        }
        n_render++;
        free(out);
        free(want);
        free(c.text);
        free(tmpl);
    }
    free(tsv);
    print_message("%d renderings compared, %d refusals checked, %d failed\n", n_render, n_refused,
                  n_failed);
    assert_int_equal(n_failed, 0);
    assert_true(n_render >= 400); /* the manifest was read, not skipped */
}

/* An unknown template text is refused with its first line quoted and the way out named. */
static void test_unknown_text(void **state)
{
    (void)state;
    struct nf_chat_msg m = {.role = "user", .content = "Hi"};
    char err[512];
    char *out = (char *)1;
    int rc = nf_chat_render("{{ messages | tojson }}\nmore", &m, 1, true, NULL, NULL, &out, err,
                            sizeof(err));
    assert_true(rc < 0);
    assert_null(out);
    assert_non_null(strstr(err, "unknown chat template \"{{ messages | tojson }}...\""));
    assert_non_null(strstr(err, "--chat-template NAME"));
    assert_non_null(strstr(err, "chatml"));
    assert_null(strchr(err, '\n'));
}

/* A misspelt built-in name is refused by name too. */
static void test_unknown_name(void **state)
{
    (void)state;
    struct nf_chat_msg m = {.role = "user", .content = "Hi"};
    char err[512];
    char *out = NULL;
    assert_true(nf_chat_render("llama-3", &m, 1, true, NULL, NULL, &out, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "\"llama-3\""));
    assert_null(nf_chat_detect("llama-3"));
}

/* A family llama.cpp knows and NanoFlow does not render is refused with the family's name. */
static void test_unsupported_family(void **state)
{
    (void)state;
    struct nf_chat_msg m = {.role = "user", .content = "Hi"};
    char err[512];
    char *out = NULL;
    const char *granite = "{% for m in messages %}<|start_of_role|>{{ m.role }}<|end_of_role|>"
                          "{{ m.content }}<|end_of_text|>\n{% endfor %}";
    assert_null(nf_chat_detect(granite));
    assert_true(nf_chat_render(granite, &m, 1, true, NULL, NULL, &out, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "\"granite\""));
    assert_non_null(strstr(err, "--chat-template NAME"));
}

/* Bad arguments are refused, not crashed on. */
static void test_bad_args(void **state)
{
    (void)state;
    struct nf_chat_msg m = {.role = NULL, .content = "Hi"};
    char err[256];
    char *out = NULL;
    assert_true(nf_chat_render("chatml", &m, 1, true, NULL, NULL, &out, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "no role"));
    assert_true(nf_chat_render(NULL, &m, 1, true, NULL, NULL, &out, err, sizeof(err)) < 0);
    assert_null(nf_chat_detect(NULL));
    /* no messages: only the generation prompt */
    assert_int_equal(nf_chat_render("chatml", NULL, 0, true, NULL, NULL, &out, err, sizeof(err)),
                     0);
    assert_string_equal(out, "<|im_start|>assistant\n");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),        cmocka_unit_test(test_unknown_text),
        cmocka_unit_test(test_unknown_name), cmocka_unit_test(test_unsupported_family),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
