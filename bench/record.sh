#!/usr/bin/env bash
# Records a benchmark summary in docs/BENCHMARKS.md (issue 23): the latest run of each kind stands
# on top, whole; every run adds one line to the history.
#
#   bash bench/record.sh SUMMARY.md [DOC]    # DOC: docs/BENCHMARKS.md unless given
#
# SUMMARY.md holds the sections a run printed, each starting `### DATE UTC · KIND · commit C`
# (examples/bench and bench/one-core.sh write them with --doc FILE; bench/run.sh and bench/tls.sh
# call this script). The sections of one kind replace that kind's block between
# `<!-- bench:latest KIND -->` and `<!-- bench:end KIND -->` (a full run's two passes, --mode=all
# and --intake-only, stand there together); a kind seen for the first time gets a block of its own
# before the history. Each section adds a row to the table before `<!-- bench:end history -->`:
# when, kind, commit, mode, the sustained rate per backend (full runs and the one-core profile),
# and the run's note. Older runs' full sections stay in git: `git log -p docs/BENCHMARKS.md`.
set -euo pipefail

summary=${1:?usage: bench/record.sh SUMMARY.md [DOC]}
doc=${2:-$(dirname "${BASH_SOURCE[0]}")/../docs/BENCHMARKS.md}
[[ -s $summary ]] || { echo "bench/record.sh: $summary is empty or missing" >&2; exit 1; }
[[ -f $doc ]] || { echo "bench/record.sh: $doc not found" >&2; exit 1; }

python3 - "$summary" "$doc" <<'EOF'
import re
import sys

summary_path, doc_path = sys.argv[1], sys.argv[2]
HEAD = re.compile(r"^### (.+?) · (.+?) · commit (\S+)\s*$")


def sections(text):
    """The run sections of a summary: (kind, date, kind with details, commit, lines)."""
    out, cur = [], None
    for line in text.splitlines():
        m = HEAD.match(line)
        if m:
            cur = [m.group(1), m.group(2), m.group(3), [line]]
            out.append(cur)
        elif cur is not None:
            cur[3].append(line)
    runs = []
    for date, kind, commit, lines in out:
        while lines and not lines[-1].strip():
            lines.pop()
        slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(.*?\)", "", kind).lower()).strip("-")
        runs.append((slug, date, kind, commit, lines))
    return runs


def history_row(date, kind, commit, lines):
    """One line for the history: the figures a reader compares across runs."""
    text = "\n".join(lines)
    mode = re.search(r"(--mode=[a-z-]+)", text)
    mode = mode.group(1) if mode else ""
    rates = {}
    backend = None
    for line in lines:
        if line.startswith("#### "):
            backend = line[5:].strip().lower()
        m = re.search(r"Sustained intake with p99 <= 10 ms: \*\*([^*]+)\*\*", line)
        if m and backend:
            rates[backend] = re.sub(r" orders/s$| \(.*\)$", "", m.group(1))
        m = re.match(r"^\| (sqlite|postgres) \| ([^|]+?) \|", line)
        if m:
            rates["postgresql" if m.group(1) == "postgres" else "sqlite"] = m.group(2)
    if "one-core" in kind:
        mode = "--mode=all, one core"
    note = re.search(r"^Note: (.*)$", text, re.M)
    note = note.group(1).strip() if note else ""
    cell = lambda v: f"{v}/s" if v and v.isdigit() else (v or "")
    return (f"| {date} | {kind} | {commit} | {mode} | {cell(rates.get('postgresql'))} | "
            f"{cell(rates.get('sqlite'))} | {note.replace('|', '/')} |")


runs = sections(open(summary_path, encoding="utf-8").read())
if not runs:
    sys.exit(f"bench/record.sh: no section starting '### DATE · KIND · commit C' in {summary_path}")
doc = open(doc_path, encoding="utf-8").read()
end_history = "<!-- bench:end history -->"
if end_history not in doc:
    sys.exit(f"bench/record.sh: {doc_path} has no '{end_history}' line")

by_kind = {}
for slug, date, kind, commit, lines in runs:
    by_kind.setdefault(slug, []).append("\n".join(lines))
for slug, parts in by_kind.items():
    begin, end = f"<!-- bench:latest {slug} -->", f"<!-- bench:end {slug} -->"
    block = begin + "\n\n" + "\n\n".join(parts) + "\n\n" + end
    if begin in doc and end in doc:
        i, j = doc.index(begin), doc.index(end) + len(end)
        doc = doc[:i] + block + doc[j:]
    else:
        title = runs[[r[0] for r in runs].index(slug)][2]
        title = re.sub(r"\s*\(.*?\)", "", title)
        new = f"## Latest {title}\n\n{block}\n\n"
        doc = doc.replace("## History\n", new + "## History\n", 1)

rows = "".join(history_row(date, kind, commit, lines) + "\n" for _, date, kind, commit, lines in runs)
doc = doc.replace(end_history, rows + end_history, 1)
open(doc_path, "w", encoding="utf-8").write(doc)
print(f"bench/record.sh: {len(runs)} run(s) recorded in {doc_path}")
EOF
