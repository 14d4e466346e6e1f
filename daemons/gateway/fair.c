/* fair.c - the gateway's fair queue: generations wait here, one FIFO per client, and are
 * forwarded to compute round-robin over the clients (the least recently served client's oldest
 * request next), at most g->max_running at once.
 *
 * Why in the gateway: compute serves its queue in arrival order, so a client that sends ten
 * requests at once would make every later client wait for all ten. Here a client is the API key
 * its request carries (Authorization: Bearer), else its peer address; each turn forwards one
 * request of the next client that has one, so a client's wait grows with the
 * number of clients, not with the other clients' backlog; a client that comes while another
 * floods is served next. Compute still runs what it is sent in order (its own queue stays
 * short: max_running deep), and raising max_running lets a batching compute run several at
 * once. A client stays listed while it has requests waiting or running (so a flooder whose
 * backlog drained for a moment keeps its turn history) and is freed after. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "nf_err.h"
#include "nf_time.h"

struct gw_client {
    struct gw_client *prev, *next; /* the list of clients with waiting requests */
    struct gw_wait *head, *tail;   /* its waiting requests, oldest first */
    int n_running;                 /* its requests forwarded and not yet done */
    uint64_t served;               /* g->fair_seq when it was last served; 0: not yet */
    uint64_t arrived;              /* g->fair_seq when it joined the list */
    char id[GW_CLIENT_ID_MAX];
};

static struct gw_client *client_find(struct gw *g, const char *id)
{
    for (struct gw_client *c = g->clients; c; c = c->next)
        if (!strcmp(c->id, id))
            return c;
    return NULL;
}

/* Unlinks client c and frees it once it has no request waiting or running. */
static void client_drop(struct gw *g, struct gw_client *c)
{
    if (c->head || c->n_running > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        g->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    g->n_clients--;
    free(c);
}

int gw_fair_push(struct gw *g, struct gw_wait *w, const char *client)
{
    struct gw_client *c = client_find(g, client);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c)
            return -ENOMEM;
        snprintf(c->id, sizeof(c->id), "%s", client);
        c->arrived = ++g->fair_seq;
        c->next = g->clients;
        if (c->next)
            c->next->prev = c;
        g->clients = c;
        g->n_clients++;
    }
    w->next = NULL;
    w->cl = c;
    w->queued = true;
    w->t_queued_ns = nf_now_ns();
    w->ahead = (uint32_t)(g->n_waiting + g->n_running);
    if (c->tail)
        c->tail->next = w;
    else
        c->head = w;
    c->tail = w;
    g->n_waiting++;
    return 0;
}

/* The client whose turn it is: the least recently served, clients not served yet (newcomers)
 * first in the order they came. Cost O(clients), a few dozen at most (max_queue). */
static struct gw_client *next_client(const struct gw *g)
{
    struct gw_client *best = NULL;
    for (struct gw_client *c = g->clients; c; c = c->next)
        if (c->head && (!best || c->served < best->served ||
                        (c->served == best->served && c->arrived < best->arrived)))
            best = c;
    return best;
}

struct gw_wait *gw_fair_pop(struct gw *g)
{
    struct gw_client *c = next_client(g);
    if (!c)
        return NULL;
    struct gw_wait *w = c->head;
    c->head = w->next;
    if (!c->head)
        c->tail = NULL;
    c->served = ++g->fair_seq;
    c->n_running++;
    w->next = NULL;
    w->queued = false;
    g->n_waiting--;
    const uint64_t ns = nf_now_ns() - w->t_queued_ns;
    g->n_started++;
    g->wait_ns_sum += ns;
    if (ns > g->wait_ns_max)
        g->wait_ns_max = ns;
    return w;
}
void gw_fair_done(struct gw *g, struct gw_wait *w)
{
    struct gw_client *c = w->cl;
    if (!c)
        return;
    w->cl = NULL;
    if (!w->queued) {
        c->n_running--;
        client_drop(g, c);
        return;
    }
    struct gw_wait **pp = &c->head, *prev = NULL;
    while (*pp && *pp != w) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    NF_ASSERT(*pp == w);
    *pp = w->next;
    if (c->tail == w)
        c->tail = prev;
    w->queued = false;
    g->n_waiting--;
    client_drop(g, c);
}
