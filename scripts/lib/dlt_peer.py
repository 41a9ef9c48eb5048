#!/usr/bin/env python3
"""The benchmark's peer: the same backlog loaded into PostgreSQL by dlt, the
loader a user would otherwise pick for an HTTP feed.

  dlt_peer.py SOURCE_URL HEAD DATABASE_URL DATASET WORK_DIR (free|constrained)

Pages SOURCE_URL?since=S&limit=10000 by X-Next-Cursor from 0 up to HEAD
(never asking since=HEAD, which would make the source generate), keeps the
`active` and `pending` changes, and merges them on `id`, the newest
`last_updated_at` winning among the changes of the run. Pages travel as
pyarrow tables and are loaded as parquet through ADBC, dlt's fast path.

`free` loads into a table of dlt's own making (no constraints);
`constrained` loads into a table made beforehand with the constraints of the
target's `users` table: a primary key on `id`, unique `email` and `mobile`
(dlt's own `unique` hints would put them on its staging table too, where
one id's several changes must coexist).

Prints one line: "ROWS_EXTRACTED SECONDS PEAK_RSS_KIB".
"""
import json
import os
import sys
import time
import urllib.request
from datetime import datetime

source_url, head, database_url, dataset, work_dir, variant = sys.argv[1:7]
head = int(head)
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("DLT_DATA_DIR", work_dir)

import dlt  # noqa: E402  (after the environment that configures it)
import pyarrow as pa  # noqa: E402

SYNCED = ("active", "pending")
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("name", pa.string()),
        ("email", pa.string()),
        ("mobile", pa.string()),
        ("status", pa.string()),
        ("last_updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def pages():
    since = 0
    while since < head:
        limit = min(10000, head - since)
        with urllib.request.urlopen(f"{source_url}?since={since}&limit={limit}") as r:
            since = int(r.headers["X-Next-Cursor"])
            page = json.load(r)
        rows = [
            {**p, "last_updated_at": datetime.fromisoformat(p["last_updated_at"])}
            for p in page
            if p.get("status") in SYNCED
        ]
        yield pa.Table.from_pylist(rows, schema=SCHEMA)


if variant == "constrained":
    import psycopg2  # comes with dlt[postgres]

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {dataset}")
        cur.execute(
            f"""CREATE TABLE {dataset}.users (
                id VARCHAR PRIMARY KEY,
                name VARCHAR NOT NULL,
                email VARCHAR UNIQUE NOT NULL,
                mobile VARCHAR UNIQUE NOT NULL,
                status VARCHAR NOT NULL,
                last_updated_at TIMESTAMPTZ NOT NULL)"""
        )
elif variant != "free":
    sys.exit(f"dlt_peer.py: the variant is free or constrained, not {variant!r}")

users = dlt.resource(
    pages,
    name="users",
    primary_key="id",
    write_disposition={"disposition": "merge", "strategy": "delete-insert"},
    columns={"last_updated_at": {"dedup_sort": "desc"}},
)
pipeline = dlt.pipeline(
    pipeline_name=f"bench_{dataset}",
    pipelines_dir=os.path.join(work_dir, "pipelines"),
    destination=dlt.destinations.postgres(
        credentials=database_url, create_indexes=False
    ),
    dataset_name=dataset,
)
started = time.monotonic()
info = pipeline.run(users, loader_file_format="parquet")
seconds = time.monotonic() - started
formats = {
    job.file_path.rsplit(".", 1)[-1]
    for package in info.load_packages
    for job in package.jobs.get("completed_jobs", [])
}
if "parquet" not in formats:
    sys.exit(f"dlt_peer.py: dlt loaded {sorted(formats)} files, not parquet through ADBC")
extracted = pipeline.last_trace.last_normalize_info.row_counts.get("users", 0)
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(extracted, f"{seconds:.3f}", peak)
