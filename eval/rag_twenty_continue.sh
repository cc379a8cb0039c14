#!/usr/bin/env bash
# The twenty runs' continuation (eval/results/rag/twenty_docs.md, amendment of 16:01 UTC): one row (or one
# ContextCite example) per process, one thread, nice 5, in the rule's order, with the package the earlier rows ran
# with (main's dc8afb9 llm_attrib, exported to $TWENTY_PACKAGE: git archive 5ce9b2b llm_attrib | tar -x -C DIR).
# Before each step it waits while /tmp/quiet.request exists and holds /tmp/rows33.busy while the step runs.
# Phase 1 until $ROWS_UNTIL (HHMM UTC, default 1700), everything else until $REST_UNTIL (default 1735): no step
# starts later. Run from the repository root.
set -u
export PYTHONPATH=${TWENTY_PACKAGE:-/tmp/rows33_old}
export CONTEXTCITE_PYTHON=${CONTEXTCITE_PYTHON:-/tmp/eval33_ccvenv/bin/python}
R=eval/results/rag
TARGET=10                       # counted rows per 20-document cell (the rule's indicative-only bound)
declare -A TOTAL=([a]=45 [b]=143)
ROWS_UNTIL=${ROWS_UNTIL:-1700}
REST_UNTIL=${REST_UNTIL:-1735}

before() { [ "$(date -u +%H%M)" -lt "$1" ]; }
step() {
    while [ -e /tmp/quiet.request ]; do sleep 10; done
    touch /tmp/rows33.busy
    echo "$(date -u +%H:%M:%S) start: $*"
    nice -n 5 python eval/rag.py "$@"; local rc=$?
    rm -f /tmp/rows33.busy
    echo "$(date -u +%H:%M:%S) end ($rc): $*"
    [ $rc -eq 0 ] || exit $rc
}
rows() { [ -f $R/twenty_$1_$2.jsonl ] && wc -l < $R/twenty_$1_$2.jsonl || echo 0; }
counted() { python3 -c "import json,sys; print(sum(1 for l in open('$R/twenty_$1_$2.jsonl') if json.loads(l).get('counted')))"; }
cc_done() { python3 -c "import json,os; p='$R/contextcite_twenty_$1_$2.json'; print(len(json.load(open(p))['examples']) if os.path.exists(p) else 0)"; }
next_without() {  # 1 + the rank of the first counted row lacking method $3 (0 if none)
    python3 -c "
import json
for l in open('$R/twenty_$1_$2.jsonl'):
    r = json.loads(l)
    if r.get('counted') and '$3' not in r['methods']:
        print(r['rank'] + 1); break
else:
    print(0)"
}

# Turns between the groups a and b until $1 (HHMM UTC): each turn `$2 GROUP` prints the group's next step (the
# arguments of eval/rag.py), or nothing when that group has none; the phase ends when neither group has one.
alternate() {
    local until=$1 next=$2 progressed g args
    while before "$until"; do
        progressed=0
        for g in a b; do
            args=$($next $g)
            if before "$until" && [ -n "$args" ]; then step $args; progressed=1; fi
        done
        [ $progressed -eq 1 ] || break
    done
}
# Phase 1: the 20-document rows, until each group has TARGET counted rows.
rows_20() {
    local n; n=$(rows $1 20)
    [ "$(counted $1 20)" -lt $TARGET ] && [ "$n" -lt "${TOTAL[$1]}" ] && echo "twenty $1 20 --methods ig_mask --n $((n + 1))"
}
# Phase 2: ContextCite 64 (and 32 from the same run) on the 20-document counted rows, an example at a time.
contextcite_20() {
    local k; k=$(cc_done $1 20)
    [ "$k" -lt "$(counted $1 20)" ] && echo "contextcite twenty_${1}_20 --also-ablations 32 --resume --limit $((k + 1))"
}
# Phase 3: the Shapley values on the 20-document counted rows that lack them.
shapley_20() {
    local n; n=$(next_without $1 20 shapley)
    [ "$n" -gt 0 ] && echo "twenty $1 20 --add shapley --n $n"
}
alternate "$ROWS_UNTIL" rows_20
alternate "$REST_UNTIL" contextcite_20
alternate "$REST_UNTIL" shapley_20
# Phase 4: more 3-5-document rows (every method), each new counted row's ContextCite right after it.
while before "$REST_UNTIL"; do
    for g in a b; do
        n=$(rows $g source)
        before "$REST_UNTIL" && [ "$n" -lt "${TOTAL[$g]}" ] && step twenty $g source --n $((n + 1))
        k=$(cc_done $g source)
        before "$REST_UNTIL" && [ "$k" -lt "$(counted $g source)" ] && step contextcite twenty_${g}_source --also-ablations 32 --resume --limit $((k + 1))
    done
done
echo "$(date -u +%H:%M:%S) done"
