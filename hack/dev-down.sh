#!/usr/bin/env bash
# Stops everything hack/dev-up.sh started, by PID, operator first.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
for name in operator boot-simulator strict-aws moto control-plane; do
    stop_pidfile "$DEV/$name.pid"
done
echo "local stack stopped"
