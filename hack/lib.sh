#!/usr/bin/env bash
# Shared helpers for the local stack scripts: paths, free ports, PID bookkeeping.
# Sourced, not run.
# shellcheck disable=SC2034  # the variables are used by the scripts that source this

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="${FEATUREENV_DEV_DIR:-$ROOT/.dev}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/featureenv-operator/target}"
OPERATOR_BIN="$CARGO_TARGET_DIR/debug/featureenv-operator"
CONTROL_PLANE_BIN="$CARGO_TARGET_DIR/debug/examples/control-plane"
# The chart's release namespace and ServiceAccount (release name `featureenv`).
RELEASE_NAMESPACE="featureenv-system"
OPERATOR_SA="featureenv-featureenv-operator"
PYTHON="${PYTHON:-python3}"
REGION="${AWS_REGION:-us-east-1}"
CLUSTER_ID="${FEATUREENV_CLUSTER_ID:-dev}"

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for DESCRIPTION SECONDS COMMAND...: retry COMMAND until it succeeds.
wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "timed out after ${seconds}s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

# stop_pidfile FILE: stop the process whose PID is in FILE (TERM, then KILL).
stop_pidfile() {
    local file="$1" pid
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# locked_stage CACHE LOCK_NAME WHAT: before a one-time Go build into CACHE. Go settings
# that keep the build on the module proxy and this toolchain; one build at a time
# (parallel callers wait on LOCK_NAME beside CACHE and then reuse the result: CACHE is
# printed and the script exits if it appeared meanwhile, as `has_all CACHE` tells);
# otherwise STAGE is a fresh directory beside CACHE, removed when the script exits.
locked_stage() {
    local cache="$1" lock="$2" what="$3"
    # Module downloads go through the proxy; never let go switch toolchains behind our back.
    export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0
    mkdir -p "$(dirname "$cache")"
    exec 9>"$(dirname "$cache")/$lock"
    if ! flock -n 9; then
        say "another build of $what is running; waiting for it"
        flock 9
    fi
    if has_all "$cache"; then
        echo "$cache"
        exit 0
    fi
    STAGE="$(mktemp -d "$(dirname "$cache")/.build.XXXXXX")"
    # shellcheck disable=SC2064  # expand STAGE now: it is this build's directory
    trap "rm -rf '$STAGE'" EXIT
}
