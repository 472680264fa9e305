#!/usr/bin/env bash
# Search through rerank-proxy with plain curl.
#
#   examples/curl.sh [--url http://127.0.0.1:9280] [--index articles] [QUERY TEXT...]
#
# The proxy URL comes from --url or $PROXY_URL (default http://127.0.0.1:9280). Creates the
# index from examples/sample-data/articles.jsonl when it is missing (indexing passes through
# the proxy untouched), then runs the same search twice: with `X-Rerank: off` (the engine's
# order) and normally (reranked), printing the X-Rerank* response headers and the top hits.
#
# Other per-request controls: `?rerank=false` (same as the header; the proxy strips it before
# forwarding) and `X-Rerank-Query: TEXT` (rerank against TEXT instead of the text it finds in
# the query DSL).
#
# Exit status: 0 when reranked, 1 on an error, 3 when the proxy answered but did not rerank.
# Needs curl, and jq or python3 to print the hits.
set -euo pipefail

url=${PROXY_URL:-http://127.0.0.1:9280}
index=articles
while [ $# -gt 0 ]; do
  case $1 in
    --url) url=$2; shift 2 ;;
    --url=*) url=${1#--url=}; shift ;;
    --index) index=$2; shift 2 ;;
    --index=*) index=${1#--index=}; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) echo "curl.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
query=${*:-how does a search engine rank documents}
url=${url%/}
here=$(cd "$(dirname "$0")" && pwd)
sample=$here/sample-data/articles.jsonl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --noproxy: never send local test traffic through an http_proxy from the environment.
curl_() { curl -sS --noproxy '*' --max-time 60 "$@"; }

# JSON string literal of $1 (for the query text inside the request body).
json_string() {
  if command -v jq >/dev/null; then jq -Rn --arg s "$1" '$s'
  else python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; fi
}

# "title  (score, engine score)" per hit of the search response in file $1.
print_hits() {
  if command -v jq >/dev/null; then
    jq -r '.hits.hits | to_entries[] | "\(.key + 1 | tostring | (" " * (2 - length)) + .). score \(.value._score)  engine \(.value.fields._engine_score[0] // "-")  \(.value._source.title)"' "$1"
  else
    python3 - "$1" <<'EOF'
import json, sys
for i, h in enumerate(json.load(open(sys.argv[1]))["hits"]["hits"], 1):
    engine = h.get("fields", {}).get("_engine_score", ["-"])[0]
    print(f"{i:2d}. score {h['_score']}  engine {engine}  {h['_source']['title']}")
EOF
  fi
}

status=$(curl_ -o /dev/null -w '%{http_code}' -I "$url/$index") || {
  echo "curl.sh: cannot reach $url" >&2; exit 1; }
if [ "$status" = 404 ]; then
  curl_ -f -o /dev/null -X PUT "$url/$index" -H 'Content-Type: application/json' \
    -d '{"mappings": {"properties": {"title": {"type": "text"}, "body": {"type": "text"}}}}'
  # _bulk wants NDJSON: an action line before every document.
  awk 'NF { print "{\"index\":{}}"; print }' "$sample" >"$tmp/bulk.ndjson"
  curl_ -f -o "$tmp/bulk.json" -X POST "$url/$index/_bulk?refresh=true" \
    -H 'Content-Type: application/x-ndjson' --data-binary "@$tmp/bulk.ndjson"
  if grep -q '"errors":true' "$tmp/bulk.json"; then
    echo "curl.sh: some documents were rejected: $(head -c 500 "$tmp/bulk.json")" >&2; exit 1
  fi
  echo "created index '$index' with $(grep -c . "$sample") articles"
elif [ "$status" != 200 ]; then
  echo "curl.sh: HEAD $url/$index answered $status" >&2; exit 1
fi

body='{"query": {"multi_match": {"query": '"$(json_string "$query")"', "fields": ["title^2", "body"]}}, "size": 5}'
search() {  # search OUT_FILE [curl args...]; headers go to OUT_FILE.headers
  local out=$1; shift
  curl_ -f -o "$out" -D "$out.headers" -H 'Content-Type: application/json' \
    "$url/$index/_search" -d "$body" "$@"
}

echo "query: '$query' via $url"
echo
echo "== engine order (X-Rerank: off) =="
search "$tmp/engine.json" -H 'X-Rerank: off'
print_hits "$tmp/engine.json"
echo
echo "== through the proxy =="
search "$tmp/reranked.json"
grep -i '^x-rerank' "$tmp/reranked.json.headers" | tr -d '\r' || echo "(no X-Rerank header)"
print_hits "$tmp/reranked.json"

if ! grep -qi '^x-rerank: applied' "$tmp/reranked.json.headers"; then
  echo "curl.sh: the proxy did not rerank this search (see X-Rerank-Reason)" >&2
  exit 3
fi
