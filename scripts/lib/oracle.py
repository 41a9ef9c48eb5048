#!/usr/bin/env python3
"""The failure drills' oracle: what target_service must have stored after
syncing everything a source_service handed out (SPEC §1 and §3).

The source keeps its change log in memory only, so the expectation is
computed from the source itself, in two steps:

  oracle.py dump BASE_URL HEAD OUT
      Pages GET BASE_URL/users/changes?since=S&limit=10000 from S=0 up to
      HEAD and writes the changes to OUT, one JSON array per page. It never
      asks for since=HEAD, which would make the source generate a fresh
      batch. Prints "EPOCH HEAD CHANGES".

  oracle.py expect OUT_DIR DUMP...
      Replays the dumps in order, one change at a time, the way the contract
      decides them, and writes CSV files for psql's \\copy into OUT_DIR:
        users.csv      id,name,email,mobile,status,last_updated_at,sync_status
                       the exact row of every id
        must.csv       profile_id,changed_at,outcome,reason — the rejections
                       that must be in sync_rejections
        ambiguous.csv, allowed.csv, sequential.csv, may.csv
                       empty: applied one at a time, in sequence order, every
                       outcome is exact (SPEC §3), whatever the page cuts
      Prints one line of figures as key=value pairs.

Conflicts are judged against the simulated table, which is exact: the target
decides every change against the state the changes before it left.

Standard library only: the drills run where jq may be missing.
"""

import csv
import datetime as dt
import json
import os
import re
import sys
import unicodedata
import urllib.error
import urllib.request

PAGE = 10000

UUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
TS_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
LOCAL_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
LOCAL_RE = re.compile(r"^" + LOCAL_ATOM + r"(\." + LOCAL_ATOM + r")*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
TLD_RE = re.compile(r"^[A-Za-z]{2,}$")
MOBILE_RE = re.compile(r"^\+?[0-9]{3,19}$")
SYNCED_STATUSES = ("active", "pending")
FIELDS = ("id", "name", "email", "mobile", "status", "last_updated_at")
# MAX_FUTURE_SKEW_SECS of the target; the drills leave it at its default.
FUTURE_SKEW = dt.timedelta(seconds=float(os.environ.get("MAX_FUTURE_SKEW_SECS", "300")))


def parse_ts(text):
    """RFC 3339 with an offset, truncated to microseconds; None if invalid."""
    m = TS_RE.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or ".")[1:]
    micros = int((frac + "000000")[:6])
    zone = m.group(8)
    if zone in ("Z", "z"):
        offset = dt.timedelta(0)
    else:
        sign = 1 if zone[0] == "+" else -1
        hh, mm = int(zone[1:3]), int(zone[4:6])
        if hh > 23 or mm > 59:
            return None
        offset = sign * dt.timedelta(hours=hh, minutes=mm)
    try:
        local = dt.datetime(year, month, day, hour, minute, second, micros,
                            tzinfo=dt.timezone(offset))
    except ValueError:
        return None
    return local.astimezone(dt.timezone.utc)


def valid_email(text):
    if len(text) > 254 or not text.isascii() or text.count("@") != 1:
        return False
    local, domain = text.split("@")
    if not 1 <= len(local) <= 64 or not LOCAL_RE.match(local):
        return False
    labels = domain.split(".")
    if len(labels) < 2 or not all(LABEL_RE.match(label) for label in labels):
        return False
    return bool(TLD_RE.match(labels[-1]))


def valid_name(text):
    if not 1 <= len(text) <= 255 or not text.strip():
        return False
    return not any(unicodedata.category(c) == "Cc" for c in text)


def judge(element, now):
    """(reason or None, profile_id, instant) by the checks of SPEC §3, up to
    the inactive status; stale and conflicts need the table."""
    if not isinstance(element, dict):
        return "malformed", None, None
    raw_id = element.get("id")
    raw_ts = element.get("last_updated_at")
    pid = raw_id.lower() if isinstance(raw_id, str) and UUID_RE.match(raw_id) else None
    at = parse_ts(raw_ts) if isinstance(raw_ts, str) else None
    if any(not isinstance(element.get(f), str) for f in FIELDS):
        return "malformed", pid, at
    if pid is None:
        return "invalid_id", None, at
    if at is None:
        return "invalid_timestamp", pid, None
    if not valid_email(element["email"]):
        return "invalid_email", pid, at
    if not valid_name(element["name"]):
        return "invalid_name", pid, at
    if not MOBILE_RE.match(element["mobile"]) or not element["mobile"].isascii():
        return "invalid_mobile", pid, at
    if at > now + FUTURE_SKEW:
        return "future_timestamp", pid, at
    if element["status"] not in SYNCED_STATUSES:
        return "inactive_status", pid, at
    return None, pid, at


OUTCOME = {
    "email_taken": "conflict",
    "mobile_taken": "conflict",
}


def ts_text(at):
    return at.strftime("%Y-%m-%d %H:%M:%S.%f+00") if at is not None else ""


def changes(dumps):
    for path in dumps:
        with open(path, encoding="utf-8") as f:
            for line in f:
                for element in json.loads(line):
                    yield element


class Table:
    """The users table as the contract leaves it, one change at a time:
    `rows` maps each id to [name, email, mobile, status, instant,
    sync_status], in the order the ids were first synced."""

    def __init__(self, now):
        self.now = now
        self.rows = {}
        self.email_owner, self.mobile_owner = {}, {}
        self.seen = set()  # every id that parsed

    def mark(self, pid, at, outcome):
        row = self.rows.get(pid)
        if row is not None and at is not None and at > row[4]:
            row[5] = outcome

    def apply(self, element):
        """Decides one change against the table the changes before it left,
        and applies it. Returns (outcome, reason, profile_id, instant), the
        outcome being synced, skipped, failed_validation or conflict."""
        reason, pid, at = judge(element, self.now)
        if pid is not None:
            self.seen.add(pid)
        if reason == "inactive_status":
            # A filter, not an error: nothing recorded, no row marked.
            return "skipped", reason, pid, at
        if reason is not None:
            outcome = OUTCOME.get(reason, "failed_validation")
            if pid is not None:
                self.mark(pid, at, outcome)
            return outcome, reason, pid, at
        row = self.rows.get(pid)
        # Stale against the row alone: a rejected change leaves no mark.
        if row is not None and at <= row[4]:
            return "skipped", "stale", pid, at
        email, mobile = element["email"], element["mobile"]
        taken = None
        if self.email_owner.get(email, pid) != pid:
            taken = "email_taken"
        elif self.mobile_owner.get(mobile, pid) != pid:
            taken = "mobile_taken"
        if taken is not None:
            self.mark(pid, at, "conflict")
            return "conflict", taken, pid, at
        if row is not None:
            if self.email_owner.get(row[1]) == pid:
                del self.email_owner[row[1]]
            if self.mobile_owner.get(row[2]) == pid:
                del self.mobile_owner[row[2]]
        self.email_owner[email] = pid
        self.mobile_owner[mobile] = pid
        self.rows[pid] = [element["name"], email, mobile, element["status"], at, "synced"]
        return "synced", None, pid, at


# The figure each (outcome, reason) of Table.apply counts under in `expect`.
STAT = {"synced": "synced", "conflict": "conflicts", "failed_validation": "invalid"}


def expect(out_dir, dumps):
    table = Table(dt.datetime.now(dt.timezone.utc))
    must, stats = [], dict.fromkeys(
        ("changes", "invalid", "inactive", "stale", "conflicts", "synced"), 0)
    for element in changes(dumps):
        stats["changes"] += 1
        outcome, reason, pid, at = table.apply(element)
        if outcome == "skipped":
            stats["inactive" if reason == "inactive_status" else "stale"] += 1
            continue
        stats[STAT[outcome]] += 1
        if outcome != "synced":
            must.append((pid or "", ts_text(at), outcome, reason))
    rows = table.rows

    # Applied one at a time, every outcome is exact: no id is ambiguous.
    ambiguous, allowed, may = set(), [], []

    os.makedirs(out_dir, exist_ok=True)

    def write(name, records):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(records)

    exact = [[pid] + row[:4] + [ts_text(row[4]), row[5]]
             for pid, row in rows.items() if pid not in ambiguous]
    write("users.csv", exact)
    write("ambiguous.csv", [[pid] for pid in sorted(ambiguous)])
    write("allowed.csv", allowed)
    write("sequential.csv", [[pid] + rows[pid][:4] + [ts_text(rows[pid][4])]
                             for pid in sorted(ambiguous) if pid in rows])
    # An empty key (no id, no timestamp) is loaded as NULL by \copy csv.
    write("must.csv", must)
    write("may.csv", may)
    figures = dict(stats, ids=len(table.seen), rows=len(exact),
                   ambiguous=len(ambiguous), must_rejections=len(must))
    print(" ".join("%s=%s" % kv for kv in figures.items()))


def dump(base, head, out):
    since, count, epoch = 0, 0, None
    with open(out, "w", encoding="utf-8") as f:
        while since < head:
            limit = min(PAGE, head - since)
            url = "%s/users/changes?since=%d&limit=%d" % (base.rstrip("/"), since, limit)
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    body = response.read()
                    headers = response.headers
            except urllib.error.URLError as err:
                sys.exit("oracle: GET %s failed: %s" % (url, err))
            page_epoch = headers.get("X-Source-Epoch")
            if epoch is None:
                epoch = page_epoch
            elif page_epoch != epoch:
                sys.exit("oracle: the source restarted while it was read (epoch %s, then %s)"
                         % (epoch, page_epoch))
            page = json.loads(body)
            next_cursor = int(headers["X-Next-Cursor"])
            if next_cursor != since + len(page) or not page:
                sys.exit("oracle: since=%d gave %d changes and X-Next-Cursor %d"
                         % (since, len(page), next_cursor))
            if next_cursor > head:
                sys.exit("oracle: the log went past the head %d (X-Next-Cursor %d)"
                         % (head, next_cursor))
            f.write(json.dumps(page, ensure_ascii=False, separators=(",", ":")))
            f.write("\n")
            count += len(page)
            since = next_cursor
    print(epoch or "", head, count)


def main(argv):
    if len(argv) == 4 and argv[0] == "dump":
        dump(argv[1], int(argv[2]), argv[3])
    elif len(argv) >= 3 and argv[0] == "expect":
        expect(argv[1], argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
