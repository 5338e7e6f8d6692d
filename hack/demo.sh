#!/usr/bin/env bash
# The README's first command: bring up the local stack, apply the example
# FeatureEnvironment, wait for it to become Ready and show what a user sees.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

"$ROOT/hack/dev-up.sh"
# shellcheck source=/dev/null
source "$DEV/env"

echo
echo "\$ kubectl apply -f examples/featureenvironment.yaml"
"$PYTHON" "$ROOT/hack/render_example.py" --seed "$DEV/seed.json" "$ROOT/examples/featureenvironment.yaml" | kubectl apply -f -
echo "\$ kubectl wait --for=condition=Ready fe/payments-pr-123 --timeout=120s"
if ! kubectl wait --for=condition=Ready fe/payments-pr-123 --timeout=120s; then
    echo "the environment did not become Ready; operator log tail:" >&2
    tail -n 30 "$DEV/operator.log" >&2
    kubectl get fe payments-pr-123 -o yaml >&2 || true
    exit 1
fi
echo
echo "\$ kubectl get featureenvs -o wide"
kubectl get featureenvs -o wide
echo
echo "endpoints:"
# shellcheck disable=SC2016  # a Go template, not a shell expansion
kubectl get fe payments-pr-123 -o go-template='{{range $k, $v := .status.endpoints}}  {{$k}}: {{$v}}{{"\n"}}{{end}}'
echo "database secret: $(kubectl get fe payments-pr-123 -o jsonpath='{.status.database.secretName}')"
echo
echo "\$ kubectl get rdspools"
kubectl get rdspools
echo
echo "The kubectl plugin, as an engineer uses it:"
echo "\$ kubectl featureenv list --owner alice@example.com"
kubectl featureenv list --owner alice@example.com
echo "\$ kubectl featureenv extend payments-pr-123 2h"
kubectl featureenv extend payments-pr-123 2h
echo "\$ kubectl featureenv creds payments-pr-123"
kubectl featureenv creds payments-pr-123 | sed -E 's/^(password: ).*/\1(hidden here)/'
echo "\$ kubectl featureenv logs payments-pr-123 | tail -n 3"
kubectl featureenv logs payments-pr-123 | tail -n 3
echo
echo "The stack is still running: 'source .dev/env' to use kubectl and the AWS endpoint;"
echo "'make dev-down' stops it."
