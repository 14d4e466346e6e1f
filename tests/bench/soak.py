#!/usr/bin/env python3
"""soak.py - the driver of soak.sh (issue 9's soak benchmark); not meant to be run alone.

Computes the references (the goldens' gen_ids for greedy prompts, `nanoflowctl run` for seeded
ones), starts the stack with UP_CMD, then runs N generations from C client threads while a
disturber floods the daemons' sockets (connect/close churn, unread pipelined Stats requests,
half-sent frames), sends Cancel from foreign connections and SIGKILLs a random daemon every M
generations followed by `up`. A sampler writes every daemon's VmRSS / RssAnon and the cgroup's
usage to a CSV each second. Prints one table; exits 1 when an output was wrong or a generation
failed for another reason than a killed daemon. Standard library only.
"""
import argparse
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

ROLES = ("fetcher", "predictor", "compute")
DIED = re.compile(r"the (fetcher|predictor|compute) \(pid (\d+)\) died")


# --- protobuf, by hand: only what the floods and Cancel need (proto/nanoflow.proto) ---------
def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_bytes(num, b):
    return varint(num << 3 | 2) + varint(len(b)) + b


def frame(payload):
    return struct.pack("<I", len(payload)) + payload


def envelope(req_id, num, body):
    """An Envelope with request_id and oneof field num holding the message bytes body."""
    return frame(field_varint(1, req_id) + field_bytes(num, body))


HELLO = envelope(1, 2, field_varint(1, 1) + field_bytes(3, b"ctl"))
STATS = envelope(7, 9, b"")


def cancel(target):
    return envelope(99, 8, field_varint(1, target))


def read_frames(sock, deadline):
    """Reads whole frames until the peer closes or the deadline; returns the list of payloads."""
    buf = b""
    out = []
    while time.time() < deadline:
        sock.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 4:
            n = struct.unpack_from("<I", buf)[0]
            if len(buf) < 4 + n:
                break
            out.append(buf[4 : 4 + n])
            buf = buf[4 + n :]
    return out


def oneof_case(payload):
    """The field number of the Envelope's oneof in payload (the first field past request_id)."""
    i = 0
    while i < len(payload):
        key, shift = 0, 0
        while True:
            b = payload[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        num, wt = key >> 3, key & 7
        if num != 1:
            return num
        while payload[i] & 0x80:  # request_id: a varint
            i += 1
        i += 1
        if wt != 0:
            return None
    return None


# --- the soak -------------------------------------------------------------------------------
class Soak:
    def __init__(self, a):
        self.a = a
        self.lock = threading.Lock()
        self.next_job = 0
        self.stop = threading.Event()
        self.paused = threading.Event()  # set while a daemon is killed and the stack restarts
        self.paused.clear()
        self.inflight = 0
        self.done = 0
        self.count = {"ok": 0, "killed": 0, "timeout": 0, "error": 0, "hang": 0, "intr": 0, "cap": 0}
        self.killed_by = {r: 0 for r in ROLES}
        self.wrong = []
        self.errors = []
        self.kills = []  # (role, pid, drain seconds, up seconds, up ok)
        self.floods = {"churn": 0, "pipelined": 0, "half": 0}
        self.flood_err = 0
        self.flood_why = {}
        self.backoffs = 0
        self.cancels = {"sent": 0, "refused": 0, "other": 0}
        self.samples = {r: [] for r in ROLES}  # (t, VmRSS kB) for the over-time line
        self.mem = {r: None for r in ROLES}  # [start VmRSS, max, end, start anon, max, end]
        self.cg_max = 0

    def sock_path(self, role):
        return os.path.join(self.a.run_dir, role + ".sock")

    def pid(self, role):
        try:
            with open(os.path.join(self.a.run_dir, role + ".pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def connect(self, role):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(self.sock_path(role))
        return s

    # references
    def references(self):
        jobs = []
        with open(self.a.golden) as f:
            goldens = [json.loads(line) for line in f if line.strip()]
        for g in goldens:
            if len(g["gen_ids"]) < self.a.tokens:
                sys.exit("soak: golden for %r has fewer than %d ids" % (g["prompt"], self.a.tokens))
            jobs.append((g["prompt"], ["--temp", "0"], g["gen_ids"][: self.a.tokens]))
            for seed in range(1, self.a.seeds + 1):
                flags = ["--temp", "0.8", "--seed", str(seed)]
                cmd = [self.a.bin, "run", "-m", self.a.model, "-p", g["prompt"], "-t", "1",
                       "-n", str(self.a.tokens), "--json"] + flags
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                ids = self.summary_ids(r.stdout) if r.returncode == 0 else None
                if ids is None:
                    sys.exit("soak: reference run failed: %s\n%s" % (" ".join(cmd), r.stderr))
                jobs.append((g["prompt"], flags, ids))
        return jobs

    @staticmethod
    def summary_ids(out):
        for line in reversed(out.splitlines()):
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if "gen_ids" in o:
                return o["gen_ids"]
        return None

    # clients
    def client(self):
        while not self.stop.is_set():
            while self.paused.is_set() and not self.stop.is_set():
                time.sleep(0.02)
            with self.lock:
                if self.next_job >= self.a.n or self.stop.is_set() or self.paused.is_set():
                    if self.next_job >= self.a.n or self.stop.is_set():
                        return
                    continue
                i = self.next_job
                self.next_job += 1
                self.inflight += 1
            prompt, flags, ref = self.jobs[i % len(self.jobs)]
            cmd = [self.a.bin, "gen", "--run-dir", self.a.run_dir, "-p", prompt,
                   "-n", str(self.a.tokens), "--json", "--timeout", "30"] + flags
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                rc, out, err = r.returncode, r.stdout, r.stderr
            except subprocess.TimeoutExpired:
                rc, out, err = None, "", "no exit within 120 s"
            with self.lock:
                self.inflight -= 1
                self.done += 1
                if rc == 0:
                    ids = self.summary_ids(out)
                    if ids == ref:
                        self.count["ok"] += 1
                    else:
                        self.wrong.append((i, prompt, flags, ids, ref))
                elif rc is None:
                    self.count["hang"] += 1
                    self.errors.append((i, "hang", " ".join(cmd)))
                elif rc == 130 and self.stop.is_set():
                    self.count["intr"] += 1  # Ctrl-C reached the clients too
                elif DIED.search(err):
                    self.count["killed"] += 1
                    self.killed_by[DIED.search(err).group(1)] += 1
                elif "too many connections" in err:
                    # The per-daemon connection cap, filled by a flood: the defence issue 9
                    # asked for, shown apart (the client may try again).
                    self.count["cap"] += 1
                    self.errors.append((i, "refused by the cap", err.strip()))
                elif "giving up" in err:
                    self.count["timeout"] += 1
                    self.errors.append((i, "timeout", err.strip()))
                else:
                    self.count["error"] += 1
                    self.errors.append((i, "error rc %d" % rc, err.strip()))

    # disturber
    def flood(self, kind, role):
        try:
            if kind == "churn":
                # A full listen backlog answers EAGAIN: back off 1 ms and go on (for 10 s at most).
                done, t_end = 0, time.time() + 10
                while done < self.a.churn and time.time() < t_end:
                    try:
                        self.connect(role).close()
                        done += 1
                    except BlockingIOError:
                        with self.lock:
                            self.backoffs += 1
                        time.sleep(0.001)
            elif kind == "pipelined":
                s = self.connect(role)
                s.setblocking(False)
                data = STATS * self.a.pipelined
                sent, t_end = 0, time.time() + 2
                while sent < len(data) and time.time() < t_end:
                    try:
                        sent += s.send(data[sent:])
                    except BlockingIOError:
                        time.sleep(0.01)  # the daemon stopped reading us: the output bound
                    except OSError:
                        break
                s.close()
            elif kind == "half":
                socks = []
                for _ in range(self.a.half):
                    s = self.connect(role)
                    s.sendall(struct.pack("<I", 1 << 20) + b"\0" * 65536)
                    socks.append(s)
                time.sleep(0.5)
                for s in socks:
                    s.close()
            self.floods[kind] += 1
        except OSError as e:
            with self.lock:
                self.flood_err += 1  # the daemon refused or was just restarted: not an error
                self.flood_why["%s: %s" % (kind, e)] = self.flood_why.get("%s: %s" % (kind, e), 0) + 1

    def foreign_cancel(self):
        """Cancel of request ids 1..4 from a connection that asked for nothing: must be refused."""
        try:
            s = self.connect("compute")
            s.sendall(HELLO + b"".join(cancel(t) for t in range(1, 5)))
            frames = read_frames(s, time.time() + 1)
            s.close()
        except OSError as e:
            with self.lock:
                self.flood_err += 1
                self.flood_why["cancel: %s" % e] = self.flood_why.get("cancel: %s" % e, 0) + 1
            return
        with self.lock:
            self.cancels["sent"] += 4
            for p in frames:
                case = oneof_case(p)
                if case == 14:
                    self.cancels["refused"] += 1
                elif case != 2:
                    self.cancels["other"] += 1

    def kill_and_up(self):
        role = random.choice(ROLES)
        pid = self.pid(role)
        self.paused.set()
        t0 = time.time()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        # Generations in flight must fail at once naming the daemon: wait for them (a hang shows
        # here as a drain of 120 s and in the "hang" count).
        while time.time() - t0 < 130:
            with self.lock:
                if self.inflight == 0:
                    break
            time.sleep(0.02)
        drain = time.time() - t0
        t1 = time.time()
        ok = self.up()
        self.kills.append((role, pid, drain, time.time() - t1, ok))
        self.paused.clear()
        return ok

    def up(self):
        for _ in range(2):
            r = subprocess.run(self.a.up_cmd, shell=True, capture_output=True, text=True)
            if r.returncode == 0:
                return True
            self.errors.append((-1, "up rc %d" % r.returncode, r.stderr.strip()))
        return False

    def killer(self):
        """SIGKILLs a random daemon each time kill_every more generations have ended."""
        next_kill = self.a.kill_every
        while self.a.kill_every and not self.stop.wait(0.05):
            if self.done >= next_kill and next_kill < self.a.n:
                next_kill += self.a.kill_every
                if not self.kill_and_up():
                    sys.stderr.write("soak: up failed twice after a kill: stopping\n")
                    self.stop.set()

    def flooder(self):
        """Floods a random daemon (or cancels from a foreign connection) every flood_gap s."""
        kinds = ("churn", "pipelined", "half", "cancel")
        while not self.stop.wait(self.a.flood_gap):
            kind = random.choice(kinds)
            if kind == "cancel":
                self.foreign_cancel()
            else:
                self.flood(kind, random.choice(ROLES))

    # sampler
    @staticmethod
    def proc_kb(pid):
        v = {}
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    k, _, rest = line.partition(":")
                    if k in ("VmRSS", "RssAnon"):
                        v[k] = int(rest.split()[0])
        except (OSError, ValueError):
            return None
        return v if len(v) == 2 else None

    def cg_usage(self):
        if not self.a.cgroup:
            return None
        for name in ("memory.current", "memory.usage_in_bytes"):
            try:
                with open(os.path.join(self.a.cgroup, name)) as f:
                    return int(f.read())
            except (OSError, ValueError):
                continue
        return None

    def sampler(self, csv):
        t0 = time.time()
        csv.write("t_s,role,pid,vmrss_kb,rssanon_kb,cgroup_bytes,generations_done\n")
        while True:
            cg = self.cg_usage()
            if cg is not None:
                self.cg_max = max(self.cg_max, cg)
            for role in ROLES:
                pid = self.pid(role)
                v = self.proc_kb(pid) if pid else None
                if v is None:
                    continue
                m = self.mem[role]
                rss, anon = v["VmRSS"], v["RssAnon"]
                self.samples[role].append((time.time() - t0, rss))
                if m is None:
                    self.mem[role] = [rss, rss, rss, anon, anon, anon]
                else:
                    m[1], m[2], m[4], m[5] = max(m[1], rss), rss, max(m[4], anon), anon
                csv.write("%.1f,%s,%d,%d,%d,%s,%d\n" % (time.time() - t0, role, pid, rss, anon,
                                                        "" if cg is None else cg, self.done))
            csv.flush()
            if self.stop.wait(1.0):
                return

    # the whole run
    def run(self):
        a = self.a
        t = time.time()
        self.jobs = self.references()
        print("soak: %d references (%d greedy from the goldens, %d seeded from run) in %.1f s"
              % (len(self.jobs), len(self.jobs) // (a.seeds + 1),
                 len(self.jobs) - len(self.jobs) // (a.seeds + 1), time.time() - t), flush=True)
        if not self.up():
            sys.exit("soak: up failed: %s" % self.errors[-1][2])
        csv = open(a.csv, "w")
        samp = threading.Thread(target=self.sampler, args=(csv,), daemon=True)
        samp.start()
        t0 = time.time()
        clients = [threading.Thread(target=self.client, daemon=True) for _ in range(a.clients)]
        dist = [threading.Thread(target=self.killer, daemon=True)]
        dist += [threading.Thread(target=self.flooder, daemon=True) for _ in range(a.flooders)]
        for th in clients + dist:
            th.start()
        interrupted = False
        try:
            while any(c.is_alive() for c in clients):
                if time.time() - t0 > a.duration and not self.stop.is_set():
                    sys.stderr.write("soak: --duration %d s reached: finishing in-flight\n"
                                     % a.duration)
                    self.stop.set()
                time.sleep(0.2)
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
        self.stop.set()
        for th in clients + dist:
            th.join(timeout=150)
        self.elapsed = time.time() - t0
        samp.join(timeout=5)
        csv.close()
        self.report(interrupted)
        bad = len(self.wrong) + self.count["error"] + self.count["timeout"] + self.count["hang"]
        return 1 if bad or interrupted or not all(k[4] for k in self.kills) else 0

    def cg_final(self):
        """(peak bytes, OOM kills) from the cgroup's own counters, None where unknown."""
        peak, ooms = None, None
        cg = self.a.cgroup
        if not cg:
            return None, None
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            try:
                with open(os.path.join(cg, name)) as f:
                    peak = int(f.read())
                break
            except (OSError, ValueError):
                continue
        for name in ("memory.events", "memory.oom_control"):
            try:
                with open(os.path.join(cg, name)) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == "oom_kill":
                            ooms = int(v)
                break
            except (OSError, ValueError):
                continue
        return peak, ooms

    def report(self, interrupted):
        a, c = self.a, self.count
        mib = lambda kb: "%.1f" % (kb / 1024.0)
        peak, ooms = self.cg_final()
        print()
        print("soak: %d generations asked, %d clients, %d-token outputs, a kill every %d, "
              "cgroup %s%s" % (a.n, a.clients, a.tokens, a.kill_every, a.cgroup or "none",
                              " (INTERRUPTED)" if interrupted else ""))
        rows = [
            ("generations run", self.done, ""),
            ("  completed, output = reference", c["ok"], ""),
            ("  completed, WRONG output", len(self.wrong), "must be 0"),
            ("  failed, daemon killed", c["killed"],
             " ".join("%s %d" % (r, self.killed_by[r]) for r in ROLES)),
            ("  failed, refused by the conn. cap", c["cap"], "a flood filled it"),
            ("  failed, timeout", c["timeout"], "must be 0"),
            ("  failed, other error", c["error"], "must be 0"),
            ("  hung (no exit in 120 s)", c["hang"], "must be 0"),
            ("  interrupted (Ctrl-C)", c["intr"], ""),
            ("duration", "%.1f s" % self.elapsed,
             "%.1f gen/s" % (self.done / self.elapsed if self.elapsed else 0)),
            ("daemon kills + up", len(self.kills),
             "drain max %.2f s, up max %.2f s, up failures %d" % (
                 max([k[2] for k in self.kills] or [0]), max([k[3] for k in self.kills] or [0]),
                 sum(1 for k in self.kills if not k[4]))),
            ("floods (churn/pipelined/half)", "%d/%d/%d" % (
                self.floods["churn"], self.floods["pipelined"], self.floods["half"]),
             "%d cut by a restart, %d connects backed off (EAGAIN)" % (
                 self.flood_err, self.backoffs)),
            ("foreign Cancels refused/sent", "%d/%d" % (self.cancels["refused"], self.cancels["sent"]),
             "%d other replies" % self.cancels["other"]),
        ]
        for name, v, note in rows:
            print(("%-34s %12s  %s" % (name, v, note)).rstrip())
        print()
        print("%-10s %10s %10s %10s %12s %12s %12s" % ("daemon", "RSS0 MiB", "RSSmax MiB",
                                                       "RSSend MiB", "anon0 MiB", "anonmax MiB",
                                                       "anonend MiB"))
        for r in ROLES:
            m = self.mem[r]
            if m:
                print("%-10s %10s %10s %10s %12s %12s %12s" % ((r,) + tuple(mib(x) for x in m)))
        print("(start: first sample; max over every instance, restarts included; "
              "end: last sample; CSV %s)" % a.csv)
        print("VmRSS MiB over time (at 0, 25, 50, 75, 100 %% of the run): %s" % "; ".join(
            "%s %s" % (r, " ".join(mib(self.samples[r][min(len(self.samples[r]) - 1,
                                                           q * len(self.samples[r]) // 4)][1])
                                   for q in range(5)))
            for r in ROLES if self.samples[r]))
        if a.cgroup:
            print("cgroup: peak %s MiB (sampled max %.1f MiB) of %d MiB, OOM kills %s" % (
                "?" if peak is None else "%.1f" % (peak / 1048576.0), self.cg_max / 1048576.0,
                a.limit >> 20, "?" if ooms is None else ooms))
        else:
            print("cgroup: none (%s)" % a.cgroup_note)
        for i, prompt, flags, ids, ref in self.wrong[:5]:
            print("WRONG #%d %r %s:\n  got %s\n  ref %s" % (i, prompt, " ".join(flags), ids, ref))
        for why, n in sorted(self.flood_why.items()):
            print("flood cut %dx: %s" % (n, why))
        for i, what, msg in self.errors[:10]:
            print("ERROR #%d %s: %s" % (i, what, msg))


def on_term(signum, frame):
    raise KeyboardInterrupt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--golden", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--up-cmd", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--cgroup", default="")
    p.add_argument("--cgroup-note", default="")
    p.add_argument("--limit", type=int, default=1 << 30)
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--kill-every", type=int, default=100)
    p.add_argument("--duration", type=int, default=3600)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--flood-gap", type=float, default=0.2)
    p.add_argument("--flooders", type=int, default=2)
    p.add_argument("--churn", type=int, default=500)
    p.add_argument("--pipelined", type=int, default=100000)
    p.add_argument("--half", type=int, default=20)
    p.add_argument("--random-seed", type=int, default=1)
    a = p.parse_args()
    random.seed(a.random_seed)
    # soak.sh stops us with SIGTERM on Ctrl-C (a background job ignores SIGINT): report anyway.
    signal.signal(signal.SIGTERM, on_term)
    sys.exit(Soak(a).run())


if __name__ == "__main__":
    main()
