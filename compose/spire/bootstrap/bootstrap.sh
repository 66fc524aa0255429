#!/bin/sh
# Prepares SPIRE for the meshnode compose demo, then exits (spire-bootstrap).
#
# 1. waits until the SPIRE server is healthy;
# 2. writes the server's trust bundle and a fresh join token to
#    /run/spire/bootstrap (the spire-bootstrap volume) for the agent;
# 3. creates (or updates) one registration entry per workload: selected by
#    the container label org.meshnode.workload, parented on the agent, with
#    the DNS SAN meshnode verifies servers by.
#
# It runs on every `docker compose up`: the entries are keyed by fixed entry
# IDs (update, not duplicate), and the token only matters to an agent that
# has no valid SVID yet (a restarted agent reuses the one on its volume).
# Each run leaves the alias entry of a token no agent used: harmless, and
# `docker compose down -v` clears it with everything else.
set -eu

OUT=${BOOTSTRAP_DIR:-/run/spire/bootstrap}   # the spire-bootstrap volume
TRUST_DOMAIN=example.org
# The agent's alias: `token generate -spiffeID` makes the agent that uses the
# token also hold this ID, so the workload entries can name it as parent.
AGENT_ID="spiffe://$TRUST_DOMAIN/agent/compose"

log() { echo "bootstrap: $*"; }

i=0
until spire-server healthcheck -shallow >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge 60 ]; then
        log "the SPIRE server did not become healthy within 60 s; see: docker compose logs spire-server" >&2
        exit 1
    fi
    sleep 1
done
log "SPIRE server is healthy"

umask 077
spire-server bundle show -format pem > "$OUT/bundle.pem.tmp"
chmod 0644 "$OUT/bundle.pem.tmp"
mv "$OUT/bundle.pem.tmp" "$OUT/bundle.pem"
log "wrote the trust bundle of $TRUST_DOMAIN to $OUT/bundle.pem"

token=$(spire-server token generate -spiffeID "$AGENT_ID" -ttl 600 | sed -n 's/^Token: //p')
if [ -z "$token" ]; then
    log "spire-server token generate printed no token" >&2
    exit 1
fi
printf '%s\n' "$token" > "$OUT/join_token.tmp"
mv "$OUT/join_token.tmp" "$OUT/join_token"
log "wrote a join token for $AGENT_ID (valid 600 s) to $OUT/join_token"

# ensure_entry ENTRY_ID FLAG...: create the entry, or update it to these flags.
ensure_entry() {
    id=$1
    shift
    if spire-server entry show -entryID "$id" >/dev/null 2>&1; then
        verb=update
    else
        verb=create
    fi
    spire-server entry "$verb" -entryID "$id" -parentID "$AGENT_ID" "$@" >/dev/null
    log "entry $id ($verb): $*"
}

# The -dns values are meshnode's names for the SPIFFE IDs, made with
#   meshnode dns-name spiffe://example.org/node/alpha    (and so on)
# grpcio clients verify a server only by a DNS SAN: without it, a peer with
# verify = "dns" (or the demo client) cannot verify the node.
# tests/test_compose.py checks each one against meshnode.spiffeid.dns_name_for.
ensure_entry meshnode-alpha \
    -spiffeID spiffe://example.org/node/alpha \
    -selector docker:label:org.meshnode.workload:alpha \
    -dns alpha.node.spiffe--id.example.org
ensure_entry meshnode-beta \
    -spiffeID spiffe://example.org/node/beta \
    -selector docker:label:org.meshnode.workload:beta \
    -dns beta.node.spiffe--id.example.org
ensure_entry meshnode-gamma \
    -spiffeID spiffe://example.org/node/gamma \
    -selector docker:label:org.meshnode.workload:gamma \
    -dns gamma.node.spiffe--id.example.org
ensure_entry meshnode-client \
    -spiffeID spiffe://example.org/demo/client \
    -selector docker:label:org.meshnode.workload:client \
    -dns client.demo.spiffe--id.example.org

log "done"
