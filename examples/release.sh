#!/usr/bin/env bash
# Release pipeline for a Llama 4 derivative:
#   download → inspect → quantize → quality gate → dedup-report → push (with the generated model card).
# Every decision is taken from `llama4ctl … --json` documents (kept in WORKDIR/json/) and exit codes, never
# from human output, which llama4ctl prints on stderr and may reword at any time.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: examples/release.sh [-h] BASE_REPO_ID TARGET_REPO_ID [WORKDIR]

Downloads BASE_REPO_ID from the Hub, quantizes it (FP8 for Maverick-shaped checkpoints: more than 16
experts, or MoE layers interleaved with dense ones; int4 W4A16 for Scout-shaped ones), fails if the quality
report's worst relative error exceeds MAX_REL_ERROR, measures Xet dedup against the base, and pushes the
result with a generated model card to TARGET_REPO_ID. WORKDIR (default ./release-<target name>) holds the
base, the output and each step's JSON document. After a failure, run the same command again: it continues
(verified download kept, interrupted quantize resumed, finished output reused, push re-uploads only changes).

Environment:
  HF_TOKEN, HF_ENDPOINT, HF_HOME  Hub access, read by llama4ctl itself (no token on any command line)
  QUANT=auto|fp8|int4             quantization (default auto, decided from `inspect --json`)
  MAX_REL_ERROR                   quality gate (default 0.15 for fp8, 0.3 for int4)
  GROUP_SIZE=128                  int4 input columns per scale (-1: one scale per output channel)
  MAX_SHARD_SIZE=5GB              largest output shard
  BASE_REVISION                   branch, tag or commit of the base (default main)
  BASE_CHUNKER=legacy             Xet chunker the base was uploaded with (Meta's Llama 4 repos: legacy)
  PRIVATE=1                       create TARGET_REPO_ID as a private repo
  LLAMA4CTL="llama4ctl"           how to run llama4ctl (e.g. "python -m llama4ctl")
Exit status: 0 released; 1 the quality gate failed; a failed step passes on llama4ctl's status (1 handled
error, 2 usage, 137 killed, …); 2 bad usage of this script. The reason is always on stderr.
EOF
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }
(( $# >= 2 && $# <= 3 )) || { usage >&2; exit 2; }
BASE=$1 TARGET=$2
NAME=${TARGET##*/}
WORK=${3:-./release-$NAME}
read -r -a L4 <<< "${LLAMA4CTL:-llama4ctl}"

log() { echo "release: $*" >&2; }
die() { echo "release: ERROR: $*" >&2; exit 1; }

mkdir -p "$WORK/json"
WORK=$(cd "$WORK" && pwd)   # absolute: provenance and the model card resolve the base from recorded paths
J=$WORK/json SRC=$WORK/base DST=$WORK/$NAME PARTIAL=$WORK/.$NAME.partial
rm -f "$WORK/release.json"  # written last: it exists only after a run that pushed

# q FILE EXPR: evaluate a Python expression over the JSON document in FILE (bound to d); jq may be missing.
q() { python3 -S -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# step NAME ARGS…: run `llama4ctl ARGS --json` with its document saved as $J/NAME.json; on failure, report
# the document's error (message, path, hint) and stop with llama4ctl's own exit status.
step() {
  local name=$1 rc=0; shift
  "${L4[@]}" "$@" --json > "$J/$name.json" || rc=$?
  if (( rc != 0 )); then
    local why e='" · ".join(str(d["error"][k]) for k in ("path", "message", "hint") if d["error"].get(k))'
    why=$(q "$J/$name.json" "$e" 2>/dev/null) || why="no JSON error document"
    echo "release: ERROR: llama4ctl $1 failed (exit $rc): $why" >&2
    exit "$rc"
  fi
}

# 1. download: skipped once a run has downloaded and verified it (this pins the commit for later re-runs;
#    re-verifying ~800 GB every time would cost more than it protects). A failed download is simply re-run:
#    finished files are kept and any file that failed verification was deleted, so it is fetched again.
#    original/ holds Meta's consolidated pickle weights, which llama4ctl never reads.
#    Delete WORKDIR/json/download.json to make a re-run download (and verify) again.
done_dl='d.get("verified") is True and "%s@%s" % (d["repo_id"], d["revision"])'
if [[ -f $J/download.json && -d $SRC ]] \
   && [[ $(q "$J/download.json" "$done_dl") == "$BASE@${BASE_REVISION:-main}" ]]; then
  log "base $BASE already downloaded and verified ($(q "$J/download.json" 'd["commit"]'))"
else
  step download download "$BASE" --local-dir "$SRC" --exclude 'original/*' \
    ${BASE_REVISION:+--revision "$BASE_REVISION"}
  log "downloaded $(q "$J/download.json" '"%s @ %s, %d files verified" % (d["repo_id"], d["commit"], len(d["files"]))')"
fi

# 2. inspect (headers only) → the quantization. Maverick (128 experts, MoE every other layer) gets FP8: int4
#    would cost quality where FP8 already fits 8×H100. Scout (16 experts, MoE every layer) gets int4 W4A16,
#    which fits one 80 GB GPU.
step inspect inspect "$SRC"
QUANT=${QUANT:-auto}
if [[ $QUANT == auto ]]; then
  QUANT=$(q "$J/inspect.json" '"fp8" if d["num_experts"] > 16 or d["moe_pattern"] == "interleaved" else "int4"')
fi
case $QUANT in
  fp8)  QARGS=(--fp8);  THRESHOLD=${MAX_REL_ERROR:-0.15} ;;
  int4) QARGS=(--int4 --group-size "${GROUP_SIZE:-128}"); THRESHOLD=${MAX_REL_ERROR:-0.3} ;;
  *)    die "QUANT must be auto, fp8 or int4, not '$QUANT'" ;;
esac
log "$(q "$J/inspect.json" '"%(family)s · %(num_experts)s experts · MoE %(moe_pattern)s" % d') → $QUANT"

# 3. quantize into WORKDIR/NAME. An interrupted run left .NAME.partial: resume it (finished shards are checked
#    and kept). A complete output is reused as it is, after checking against this run's plan (`--dry-run`:
#    headers only) that it was made with the same options, so a changed QUANT/GROUP_SIZE never ships stale
#    files. (`quantize --resume` alone would accept a complete output made with other options.)
if [[ -f $DST/llama4ctl.json ]]; then
  step plan quantize "$SRC" "$DST" "${QARGS[@]}" --max-shard-size "${MAX_SHARD_SIZE:-5GB}" --dry-run
  same=$(python3 -S -c 'import json, sys; plan, made = (json.load(open(f)) for f in sys.argv[1:])
print(plan["format"] == made["operation"])' "$J/plan.json" "$DST/llama4ctl.json")
  [[ $same == True ]] || die "$DST was made with other options than this run's ($QUANT): remove it or use another WORKDIR"
  log "reusing the complete output $DST"
else
  RESUME=()
  if [[ -d $PARTIAL ]]; then RESUME=(--resume); log "resuming the interrupted quantize in $PARTIAL"; fi
  step quantize quantize "$SRC" "$DST" "${QARGS[@]}" --max-shard-size "${MAX_SHARD_SIZE:-5GB}" "${RESUME[@]}"
  log "quantized: $(q "$J/quantize.json" '"%(shards_written)d shard(s) written, %(shards_skipped)d kept" % d')"
fi

# 4. quality gate, on the report stored in the output (the very file that is pushed; it is also there on
#    re-runs that reuse the output). Worst = the largest per-tensor (per-expert) relative error.
GATE=$(python3 -S - "$DST/quantization_report.json" "$THRESHOLD" <<'EOF'
import json, sys
d, limit = json.load(open(sys.argv[1])), float(sys.argv[2])
worst = max((c["max_rel_error"] for c in d["components"].values()), default=0.0)
at = d["worst_tensors"][0]["name"] if d["worst_tensors"] else "-"
print(worst, at, "pass" if worst <= limit else "fail")
EOF
) || die "cannot read $DST/quantization_report.json, or MAX_REL_ERROR='$THRESHOLD' is not a number"
read -r WORST WORST_AT VERDICT <<< "$GATE"
[[ $VERDICT == pass ]] || die "quality gate failed: worst relative error $WORST ($WORST_AT) exceeds" \
  "MAX_REL_ERROR=$THRESHOLD; nothing was pushed"
log "quality gate passed: worst relative error $WORST <= $THRESHOLD"

# 5. dedup-report against the base: how much the Hub's Xet store already holds. It also fills the chunk-index
#    cache from which push adds a dedup estimate to the model card.
step dedup dedup-report "$SRC" "$DST" --base-chunker "${BASE_CHUNKER:-legacy}"
log "dedup: $(q "$J/dedup.json" '"%(reuse_pct).1f%% already in the base, %(new_bytes)d B new" % d["derivatives"][0]')"

# 6. push with the generated card. Idempotent: the Hub skips files it already holds, so a re-run after an
#    interrupted or refused push uploads only what is missing, and one after a success commits nothing.
PUSH_ARGS=()
if [[ ${PRIVATE:-0} == 1 ]]; then PUSH_ARGS=(--private); fi
step push push "$DST" "$TARGET" "${PUSH_ARGS[@]}"
log "pushed $TARGET: $(q "$J/push.json" 'd["commit_url"] or d["url"]')"

# One summary document for whatever runs this script.
python3 -S - "$J" "$QUANT" "$WORST" "$THRESHOLD" > "$WORK/release.json" <<'EOF'
import json, sys
j, quant, worst, threshold = sys.argv[1:]
doc = lambda name: json.load(open(f"{j}/{name}.json"))
dl, ded, push = doc("download"), doc("dedup"), doc("push")
print(json.dumps({"schema_version": 1, "kind": "release", "base": dl["repo_id"], "base_commit": dl["commit"],
                  "target": push["repo_id"], "quantization": quant, "max_rel_error": float(worst),
                  "threshold": float(threshold), "dedup_reuse_pct": ded["derivatives"][0]["reuse_pct"],
                  "dedup_new_bytes": ded["derivatives"][0]["new_bytes"], "commit_oid": push["commit_oid"],
                  "url": push["url"]}))
EOF
log "done: $WORK/release.json"
