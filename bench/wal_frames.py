#!/usr/bin/env python3
"""How many WAL frames (4 KiB pages) each completion writes, and on which table or index.

Replays, with Python's sqlite3 on a copy of a kvsweep database's schema, the statements the
coordinator's store runs per completion under complete-and-lease (RecordResult: fence check,
results insert, jobs update, attempts update, workers counter; GrantLease: jobs update, attempts
insert; a savepoint around each), K completions per transaction, 200 jobs leased at a time,
10,000 jobs with random 64-hex ids. It counts the frames appended to the WAL (no checkpoints)
and maps the page numbers of the last 20,000 frames to tables and indexes (dbstat).

  bench/wal_frames.py SCHEMA_DB [K ...]     # SCHEMA_DB: any kvsweep database, e.g. from
                                            # kvsweep_orchestration_bench --dir DIR (DIR/bench.db)
"""
import collections
import hashlib
import os
import random
import shutil
import sqlite3
import struct
import sys
import tempfile


def replay(schema, k, workdir):
    db = os.path.join(workdir, f"k{k}.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=OFF")  # frames, not fsyncs, are counted
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.executescript(schema)
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10000)]
    method = "quant:bits=2,group=64,axis=token,sym=0,target=kv,residual=0,rope=post,basis=identity,seed=0,packed=0"
    c.execute("BEGIN")
    c.execute("INSERT INTO sweeps(name, spec_yaml, created_ms, updated_ms) VALUES ('b','x',0,0)")
    for j in ids:
        c.execute("INSERT INTO jobs(job_id, model_key, model, task, method, kv_heads, state, priority, "
                  "max_attempts, created_ms, updated_ms) VALUES (?,?,?,?,?,?,'queued',0,3,0,0)",
                  (j, "mk", "ref-llama", "lambada_openai", method, 2))
        c.execute("INSERT INTO job_specs VALUES (?,?)", (j, "x" * 900))
        c.execute("INSERT INTO sweep_jobs VALUES (1,?,?)", (j, '{"model":"ref-llama"}'))
    for w in range(200):
        c.execute("INSERT INTO workers(worker_id, hostname, device, evaluator, pid, first_seen_ms, "
                  "last_seen_ms) VALUES (?,?,?,?,?,?,?)", (f"bench-{w}", "vm", "cpu", "fake", 1, 0, 0))
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def grant(i, w):
        c.execute("SAVEPOINT m")
        c.execute("UPDATE jobs SET state='leased', fence=fence+1, attempts=attempts+1, lease_id=?, "
                  "lease_worker=?, lease_deadline_ms=1, updated_ms=1 WHERE job_id=? AND "
                  "state='queued' AND fence=0 RETURNING attempts", ("L" * 16, f"bench-{w}", ids[i])).fetchall()
        c.execute("INSERT INTO attempts(job_id, fence, lease_id, worker_id, started_ms, outcome) "
                  "VALUES (?,1,?,?,1,'running')", (ids[i], "L" * 16, f"bench-{w}"))
        c.execute("RELEASE m")

    def result(i, w):
        c.execute("SAVEPOINT m")
        c.execute("SELECT state, fence FROM jobs WHERE job_id=?", (ids[i],)).fetchall()
        c.execute("INSERT INTO results(job_id, fence, worker_id, recorded_ms, model, task, method, "
                  "kv_heads, acc, ppl, result_json) SELECT job_id, 1, ?, 1, model, task, method, "
                  "kv_heads, 0.5, 3.0, ? FROM jobs WHERE job_id=?", (f"bench-{w}", "r" * 900, ids[i]))
        c.execute("UPDATE jobs SET state='done', lease_id=NULL, lease_worker=NULL, "
                  "lease_deadline_ms=NULL, last_error=NULL, updated_ms=2 WHERE job_id=?", (ids[i],))
        c.execute("UPDATE attempts SET outcome='done', ended_ms=2 WHERE job_id=? AND fence=1", (ids[i],))
        c.execute("UPDATE workers SET jobs_done=jobs_done+1 WHERE worker_id=?", (f"bench-{w}",))
        c.execute("RELEASE m")

    nxt = 0
    for w in range(200):
        c.execute("BEGIN IMMEDIATE"); grant(nxt, w); nxt += 1; c.execute("COMMIT")
    frame = 4096 + 24
    wal0 = os.path.getsize(db + "-wal")
    leased = list(range(200))
    rng = random.Random(1)
    txns = done = 0
    while nxt < len(ids):
        c.execute("BEGIN IMMEDIATE")
        for _ in range(k):
            w = rng.randrange(200)
            result(leased[w], w); done += 1
            if nxt < len(ids):
                grant(nxt, w); leased[w] = nxt; nxt += 1
        c.execute("COMMIT"); txns += 1
    frames = (os.path.getsize(db + "-wal") - wal0) / frame
    data = open(db + "-wal", "rb").read()
    pages, off = [], 32
    while off + frame <= len(data):
        pages.append(struct.unpack(">I", data[off:off + 4])[0]); off += frame
    names = {p: n for n, p in c.execute("SELECT name, pageno FROM dbstat")}
    where = collections.Counter(names.get(p, "?") for p in pages[-20000:])
    c.close()
    return frames / txns, frames / done, where


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    src = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    schema = ";\n".join(r[0] for r in src.execute(
        "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
        "ORDER BY rowid")) + ";"
    ks = [int(x) for x in sys.argv[2:]] or [2, 4, 8, 16]
    workdir = tempfile.mkdtemp(prefix="kvsweep-walframes-")
    try:
        for k in ks:
            per_txn, per_job, where = replay(schema, k, workdir)
            total = sum(where.values())
            share = ", ".join(f"{n} {v / total * 100:.0f}%" for n, v in where.most_common())
            print(f"K={k:3d}: {per_txn:5.1f} frames per transaction, {per_job:4.2f} per completion; {share}")
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
