#!/usr/bin/env python3
"""The input of scripts/bench.sh's raw ceiling with rejections: what
target_service must end with after syncing a source's whole log, as COPY
text files, so that PostgreSQL alone can be timed loading it.

  raw_expected.py URL USERS_TSV REJECTIONS_TSV
      Pages GET URL?since=S&limit=10000 from S=0 up to the head the first
      page names (never asking for since=HEAD, which would make the source
      generate), decides every change in sequence order with oracle.Table
      (the rules of SPEC §3, conflicts against the simulated table), and
      writes:
        USERS_TSV       id, name, email, mobile, status, last_updated_at,
                        sync_status: the final row of every id
        REJECTIONS_TSV  profile_id, outcome, reason, message, payload,
                        changed_at: every failed_validation and conflict,
                        payload being the element's exact text as the
                        source sent it
      Prints "CHANGES HEAD SECONDS ROWS REJECTIONS".

Each element's text is cut from the page body itself (json's raw_decode
gives where each top-level element ends), so the payload, and the SHA-256
key PostgreSQL computes from it, are those of the bytes the target hashes.
"""

import datetime as dt
import json
import os
import re
import sys
import time
import urllib.request

# The oracle lives beside this file; importing it leaves no __pycache__ in
# the working tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oracle import Table, ts_text  # noqa: E402

PAGE = 10000
DECODER = json.JSONDecoder()
BLANK = re.compile(r"[ \t\n\r]*")
# A readable message per reason, like the target's (whose wording is its own).
MESSAGES = {
    "malformed": "the element is not an object of six string fields",
    "invalid_id": "id is not a UUID",
    "invalid_timestamp": "last_updated_at is not RFC 3339 with an offset",
    "invalid_email": "email is not a valid address",
    "invalid_name": "name is empty, blank, too long or holds control characters",
    "invalid_mobile": "mobile does not match ^\\+?[0-9]{3,19}$",
    "future_timestamp": "last_updated_at lies too far in the future",
    "email_taken": "email belongs to another id",
    "mobile_taken": "mobile belongs to another id",
}


def elements(body):
    """(value, exact text) of each top-level element of a JSON array's text."""
    at = BLANK.match(body, 0).end()
    if body[at:at + 1] != "[":
        raise ValueError("the page is not a JSON array")
    at = BLANK.match(body, at + 1).end()
    if body[at:at + 1] == "]":
        return
    while True:
        value, end = DECODER.raw_decode(body, at)
        yield value, body[at:end]
        at = BLANK.match(body, end).end()
        sep = body[at:at + 1]
        if sep == "]":
            return
        if sep != ",":
            raise ValueError("no ',' or ']' after an element at offset %d" % at)
        at = BLANK.match(body, at + 1).end()


def esc(text):
    """TEXT for COPY's text format."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def pages(url):
    """(body, X-Next-Cursor) of each page, from since=0 up to the head the
    first page names."""
    since, head = 0, None
    while head is None or since < head:
        with urllib.request.urlopen("%s?since=%d&limit=%d" % (url, since, PAGE), timeout=60) as r:
            next_cursor, page_head = int(r.headers["X-Next-Cursor"]), int(r.headers["X-Head-Cursor"])
            body = r.read().decode("utf-8")
        head = page_head if head is None else head
        if next_cursor <= since:
            sys.exit("raw_expected: since=%d did not move the cursor (X-Next-Cursor %d)" % (since, next_cursor))
        yield body, next_cursor
        since = next_cursor


def main(url, users_tsv, rejections_tsv):
    started = time.monotonic()
    table = Table(dt.datetime.now(dt.timezone.utc))
    changes = rejections = cursor = 0
    with open(rejections_tsv, "w", encoding="utf-8") as out:
        for body, cursor in pages(url):
            for element, text in elements(body):
                changes += 1
                outcome, reason, pid, at = table.apply(element)
                if outcome in ("synced", "skipped"):
                    continue
                rejections += 1
                out.write("\t".join((pid or "\\N", outcome, reason, esc(MESSAGES[reason]), esc(text),
                                     ts_text(at) or "\\N")))
                out.write("\n")
    with open(users_tsv, "w", encoding="utf-8") as out:
        for pid, (name, email, mobile, status, at, sync_status) in table.rows.items():
            out.write("\t".join((pid, esc(name), esc(email), esc(mobile), esc(status), ts_text(at), sync_status)))
            out.write("\n")
    print(changes, cursor, round(time.monotonic() - started, 3), len(table.rows), rejections)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    try:
        main(*sys.argv[1:])
    except (OSError, ValueError, TypeError) as err:
        # OSError: the source did not answer (URLError is one); ValueError:
        # a page that is not a JSON array or not UTF-8; TypeError: a cursor
        # header missing.
        sys.exit("raw_expected: paging %s failed: %s: %s" % (sys.argv[1], type(err).__name__, err))
