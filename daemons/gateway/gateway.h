/* gateway.h - nanoflow-gateway, the stack's OpenAI-compatible HTTP front: HTTP/1.1 over libuv
 * (http-parser), JSON with jansson, and the stack's own protocol to the daemons' sockets.
 *
 * Files: main.c (flags, start-up, the stack watch, gateway.sock), http.c (connections, the
 * parser, limits and timeouts, responses and Server-Sent Events), upstream.c (asynchronous
 * control connections to ROLE.sock), api.c (routes: /v1/completions, /v1/chat/completions,
 * /v1/models, /health, /metrics), gen.c (one generation: Generate out, TokenEvents in, stop
 * strings, the OpenAI replies), logprobs.c (their logprobs), metrics.c (the Stats of the three
 * daemons as Prometheus text), page.html (the chat page at /, compiled in by embed.cmake).
 *
 * Threads: one, the libuv loop's. Every callback below runs on it. */
#ifndef NF_GATEWAY_H
#define NF_GATEWAY_H

#include <http_parser.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon.h"
#include "stack.h"

/* Defaults of the limits (flags of nanoflow-gateway; environment for the two timeouts). */
#define GW_MAX_CONNS_DEFAULT   1024       /* HTTP connections at once (kept below RLIMIT_NOFILE) */
#define GW_MAX_BODY_DEFAULT    (2 << 20)  /* a 1 MiB prompt JSON-escaped, with room */
#define GW_MAX_HEAD            16384      /* request line and headers together */
#define GW_HEADER_TIMEOUT_S    10         /* a request's line, headers and body arrive in this */
#define GW_IDLE_TIMEOUT_S      60         /* a keep-alive connection with no request is closed */
#define GW_MAX_QUEUE_DEFAULT   64         /* generations waiting or running in the gateway */
#define GW_MAX_RUNNING_DEFAULT 1          /* forwarded to compute at once (it runs one) */
#define GW_CLIENT_ID_MAX       160        /* bytes of a client's identity (key or address) */
#define GW_OUT_MAX             (1u << 20) /* unread response bytes before a client is dropped */
#define GW_LINGER_MS           2000       /* lingering close after a final answer */
#define GW_TRIM_BYTES          (256u << 10) /* a freed body this large: malloc_trim */
#define GW_MAX_STOP            4            /* stop strings per request, as OpenAI */
#define GW_MAX_STOP_LEN        256          /* bytes of one stop string */
#define GW_UPSTREAM_TIMEOUT_MS 3000         /* a Health or Stats reply from a daemon */
#define GW_MAX_TOP_LOGPROBS    20           /* top_logprobs (chat) and logprobs (completions) */

struct gw_conn;
struct gw_gen;
struct gw_client;
struct nf_vocab;

/* A generation's place in the fair queue (fair.c), embedded in it. */
struct gw_wait {
    struct gw_wait *next;
    struct gw_client *cl; /* its client while it waits or runs, else NULL */
    bool queued;          /* waiting (not yet forwarded) */
    uint64_t t_queued_ns; /* nf_now_ns when queued */
    uint32_t ahead;       /* generations waiting or running in the gateway when it came */
};

struct gw {
    uv_loop_t *loop;
    char dir[PATH_MAX];
    char model_id[256]; /* what /v1/models lists: general.name, else the file's base name */
    const struct nf_gguf *gguf;
    struct nf_vocab *vocab;     /* loaded by the first request with top_logprobs (logprobs.c) */
    struct nf_stack *st;        /* attached region: stop word and liveness */
    const char *api_key;        /* NULL: no key asked */
    uint64_t max_body;          /* request body limit in bytes */
    int max_conns, n_conns;     /* HTTP connections: cap and how many are open */
    int max_queue, n_gens;      /* generations waiting or running: cap and how many */
    int max_running, n_running; /* of those, forwarded to compute: cap and how many */
    /* The fair queue (fair.c): the clients with waiting generations, a sequence number that
     * orders their turns; counters for stats and /metrics. */
    struct gw_client *clients;
    uint64_t fair_seq;
    int n_clients, n_waiting;
    uint64_t n_started, wait_ns_sum, wait_ns_max; /* generations forwarded; their waits here */
    uint64_t n_queue_full;                        /* answered 429: the queue was full */
    uint64_t header_timeout_ms;                   /* request line, headers and body */
    uint64_t idle_timeout_ms;                     /* keep-alive without a request */
    uint64_t next_req_id;
    const char *chat_template; /* --chat-template, else the GGUF's, else "chatml" */
    long long started_at;      /* time() at start: /v1/models' created */
    uv_tcp_t listener;
    uv_timer_t sweep;
    struct gw_conn *conns;
    bool stopping;
    bool trim; /* a large body was freed: the sweep trims the heap */
    int closes_since_trim;
    /* Counters for /metrics: requests answered by status class, generations, tokens sent. */
    uint64_t n_requests, n_2xx, n_4xx, n_5xx, n_gen_total, n_gen_tokens, n_refused;
    uint64_t n_waited; /* generations finished, whose queue waits wait_s_sum adds up */
    double wait_s_sum;
};

/* --- http.c -------------------------------------------------------------------------------- */
/* The request as the router sees it (valid during gw_api_dispatch; copy what outlives it). */
struct gw_request {
    enum http_method method;
    const char *path; /* NUL-terminated, without the query string */
    const char *body; /* (body_len) bytes, NUL-terminated */
    size_t body_len;
    const char *auth; /* Authorization header value or NULL */
    const char *peer; /* the client's address ("127.0.0.1", "::1") */
};

/* Listens on host:port ("127.0.0.1:8080", "[::1]:8080"). Returns 0 or a negative code with a
 * message in err. */
int gw_http_start(struct gw *g, const char *addr, char *err, size_t errlen);
/* Stops listening and closes every connection (their generations are cancelled). */
void gw_http_stop(struct gw *g);
/* A whole response; body may be NULL for none. extra: more header lines ("Name: v\r\n"), or
 * NULL. Ends the request: the connection reads the next one, or closes when it may not. */
void gw_http_respond(struct gw_conn *c, int status, const char *ctype, const char *body, size_t len,
                     const char *extra);
/* An OpenAI-shaped error ({"error":{"message","type","param","code"}}) with status; param and
 * code may be NULL (JSON null). */
void gw_http_error(struct gw_conn *c, int status, const char *type, const char *param,
                   const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* Server-Sent Events: the headers (chunked transfer encoding), then events, then the end. */
void gw_http_sse_begin(struct gw_conn *c);
/* Writes "data: " json "\n\n" as one chunk. Returns 0, or -EPIPE when the client is gone. */
int gw_http_sse_data(struct gw_conn *c, const char *json, size_t len);
void gw_http_sse_end(struct gw_conn *c);
/* The work answering c's request: gone(ud) is called if the client goes away first (its
 * generation is cancelled). gw_http_respond and gw_http_sse_end detach it. */
void gw_http_set_job(struct gw_conn *c, void (*gone)(void *ud), void *ud);

/* --- api.c --------------------------------------------------------------------------------- */
/* Routes one whole request; answers it at once or starts work that answers it later. */
void gw_api_dispatch(struct gw *g, struct gw_conn *c, const struct gw_request *r);
/* The error body text for the JSON error (shared with http.c). Returns a malloc'd string. */
char *gw_api_error_json(const char *msg, const char *type, const char *param, const char *code);

/* --- gen.c --------------------------------------------------------------------------------- */
/* What a completion request asks, checked by api.c. */
struct gw_gen_req {
    char *prompt; /* owned; the rendered text sent to compute */
    size_t prompt_len;
    bool chat, stream, include_usage;
    int max_tokens; /* 0: compute's default */
    float temp, top_p;
    float presence_penalty, frequency_penalty; /* 0: off */
    bool logprobs;    /* chat's logprobs true, completions' logprobs N given */
    int top_logprobs; /* alternatives per token, 0..GW_MAX_TOP_LOGPROBS */
    bool has_temp, has_top_p, has_seed;
    uint64_t seed;
    char *stop[GW_MAX_STOP]; /* owned */
    size_t stop_len[GW_MAX_STOP];
    int n_stop;
};
/* Queues the generation of q for connection c and client (fair.c; takes ownership of q's
 * strings); its turn sends a Generate to compute over a fresh connection, the reply streamed or
 * sent whole. Answers 429 itself when max_queue generations wait or run. */
void gw_gen_start(struct gw *g, struct gw_conn *c, struct gw_gen_req *q, const char *client);
/* Forwards waiting generations while fewer than max_running run. */
void gw_gen_pump(struct gw *g);
/* The client of gen went away: Cancel is sent (compute stops within one token); gen frees
 * itself once compute confirms. */
void gw_gen_client_gone(void *gen);
void gw_gen_req_free(struct gw_gen_req *q);
/* A JSON string of s[0..n), each maximal subpart of invalid UTF-8 replaced by one U+FFFD (jansson
 * takes valid UTF-8 only). */
json_t *gw_json_text(const char *s, size_t n);

/* --- logprobs.c ---------------------------------------------------------------------------- */
/* Loads g->vocab from the model (once), for the alternatives' text. Returns 0 or a negative
 * code with err set. */
int gw_lp_vocab(struct gw *g, char *err, size_t errlen);
/* Token t's entry in chat's shape ({"token","logprob","bytes","top_logprobs"}, its first n_top
 * alternatives) from the log-probabilities compute attached. */
json_t *gw_lp_token(struct gw *g, const Nanoflow__TokenEvent *t, int n_top);
/* The "logprobs" object of a choice from entries (taken): chat's {"content","refusal"}, or the
 * completions' {"tokens","token_logprobs","top_logprobs","text_offset"}, whose offsets count
 * characters from *text_offset, which it advances. */
json_t *gw_lp_render(json_t *entries, bool chat, size_t *text_offset);

/* --- fair.c -------------------------------------------------------------------------------- */
/* Queues w as the newest request of client (an id of at most GW_CLIENT_ID_MAX - 1 bytes).
 * Returns 0 or -ENOMEM. */
int gw_fair_push(struct gw *g, struct gw_wait *w, const char *client);
/* The next request to forward: the oldest of the client served least recently (one not served
 * yet first), or NULL when none waits. Counts its wait. */
struct gw_wait *gw_fair_pop(struct gw *g);
/* w leaves the gateway: done after it ran, or taken out of the queue (its client went away
 * while it waited). A no-op when it was never queued. */
void gw_fair_done(struct gw *g, struct gw_wait *w);

/* --- the chat page (page.html, compiled in by embed.cmake) -------------------------------- */
extern const unsigned char gw_page_html[];
extern const size_t gw_page_html_len;

/* --- metrics.c ----------------------------------------------------------------------------- */
/* /health and /metrics: Health or Stats requests to the three daemons, then the answer. */
void gw_health(struct gw *g, struct gw_conn *c);
void gw_metrics(struct gw *g, struct gw_conn *c);
/* Answers a StatsRequest on gateway.sock: one stage "gateway" with the fair queue's counters
 * (queue_len*, queue_clients*, running*, requests, queue_wait_ns, queue_wait_max_ns*,
 * queue_full, connections*, tokens, mem_bytes*; * = gauge). Returns 0 or a negative code. */
int gw_stats_reply(const struct gw *g, struct nf_server *s, uint64_t conn, uint64_t req_id);

/* --- upstream.c ---------------------------------------------------------------------------- */
struct gw_up;
/* A reply or event from the daemon (env is freed after the call). */
typedef void (*gw_up_msg_cb)(struct gw_up *u, nf_envelope *env, void *ud);
/* The connection closed (status 0 after gw_up_close, else why: refused, broken ...). Called
 * exactly once; u is freed after it. */
typedef void (*gw_up_close_cb)(struct gw_up *u, int status, void *ud);

/* Connects to the role's socket in g->dir, says Hello, then sends first (request id req_id).
 * Replies reach on_msg (the Hello reply is checked here, not passed on). Returns 0 or a
 * negative code (no callback is called then). */
int gw_up_open(struct gw *g, const char *role, uint64_t req_id, nf_envelope *first,
               gw_up_msg_cb on_msg, gw_up_close_cb on_close, void *ud, struct gw_up **out);
/* Sends env (queued until connected). Returns 0 or a negative code. */
int gw_up_send(struct gw_up *u, uint64_t req_id, nf_envelope *env);
/* Closes u; on_close follows (status 0). */
void gw_up_close(struct gw_up *u);

#endif
