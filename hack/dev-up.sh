#!/usr/bin/env bash
# Starts the local stack: the real kube-apiserver and etcd (hack/control-plane.rs) and
# moto_server on free 127.0.0.1 ports, AWS seeded like a real account, the CRDs, the
# example class and pool, the chart's ServiceAccount and RBAC applied, the boot
# simulator and the operator running as that ServiceAccount. Writes .dev/kubeconfig
# (admin) and .dev/env, logs and PID files under .dev/. Stop it with hack/dev-down.sh.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

if [[ -f "$DEV/operator.pid" ]] && kill -0 "$(cat "$DEV/operator.pid")" 2>/dev/null; then
    echo "the local stack is already up (source $DEV/env); hack/dev-down.sh stops it" >&2
    exit 0
fi
for bin in "$OPERATOR_BIN" "$CONTROL_PLANE_BIN"; do
    [[ -x "$bin" ]] || { echo "$bin is missing: run 'make build' first" >&2; exit 1; }
done
mkdir -p "$DEV"
# If anything below fails, do not leave half a stack running.
trap '"$ROOT/hack/dev-down.sh" >/dev/null 2>&1 || true' ERR

K8S_BIN="$("$ROOT/hack/k8s-binaries.sh")"
# kubectl of the server's version first on PATH.
export PATH="$K8S_BIN:$PATH"
echo "starting kube-apiserver and etcd ($K8S_BIN)"
# A previous run's control-plane.json would satisfy the wait below before the new
# control plane has written anything (the redirection happens in the child).
rm -rf "$DEV/k8s" "$DEV/control-plane.json"
# Which checkout it is (tests/support/root.rs): a shared target dir may hold a binary
# built in another one.
CARGO_MANIFEST_DIR="$ROOT" "$CONTROL_PLANE_BIN" --dir "$DEV/k8s" >"$DEV/control-plane.json" 2>"$DEV/control-plane.log" &
echo $! >"$DEV/control-plane.pid"
wait_for "kube-apiserver /readyz" 90 test -s "$DEV/control-plane.json"
cp "$DEV/k8s/admin.kubeconfig" "$DEV/kubeconfig"
export KUBECONFIG="$DEV/kubeconfig"
export KUBECACHEDIR="$DEV/kubecache"

echo "starting moto_server"
MOTO_PORT="$(free_port)"
"$PYTHON" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"$DEV/moto.log" 2>&1 &
echo $! >"$DEV/moto.pid"
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
wait_for "moto_server" 30 "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$AWS_ENDPOINT_URL/moto-api/')"
MOTO_ENDPOINT="$AWS_ENDPOINT_URL"

# The strict AWS layer: refuses what AWS refuses and plays AWS's timing (fast profile;
# FEATUREENV_AWS_TIMING=realistic for real durations), logging every call.
echo "starting the strict AWS layer (hack/fault_proxy.py) in front of moto"
OPERATOR_ACCESS_KEY="featureenv-operator"
rm -f "$DEV/strict-aws.addr"
# The operator signs with its own access key; the layer refuses its calls that the
# operator's IAM policy denies (your own calls, with the key in .dev/env, are not checked).
# GetConsoleOutput of a simulated instance answers with its console.log (the boot
# simulator, started below, writes them under the same --instances-dir).
"$PYTHON" "$ROOT/hack/fault_proxy.py" --listen 127.0.0.1:0 --upstream "$MOTO_ENDPOINT" --rate 0 \
    --iam-policy "$ROOT/docs/iam-policy.json" --iam-cluster-id "$CLUSTER_ID" --iam-access-key "$OPERATOR_ACCESS_KEY" \
    --instances-dir "$DEV/instances" \
    --log "$DEV/aws-calls.jsonl" >"$DEV/strict-aws.addr" 2>"$DEV/strict-aws.log" &
echo $! >"$DEV/strict-aws.pid"
wait_for "the strict AWS layer" 30 test -s "$DEV/strict-aws.addr"
AWS_ENDPOINT_URL="http://$(head -n 1 "$DEV/strict-aws.addr")"
export AWS_ENDPOINT_URL

# The kubectl plugin on PATH, so `kubectl featureenv ...` works in the stack's shell.
mkdir -p "$DEV/bin"
ln -sf "$CARGO_TARGET_DIR/debug/kubectl-featureenv" "$DEV/bin/kubectl-featureenv"

cat >"$DEV/env" <<ENV
export PATH="$DEV/bin:$K8S_BIN:\$PATH"
export KUBECONFIG="$DEV/kubeconfig"
export KUBECACHEDIR="$DEV/kubecache"
export AWS_ENDPOINT_URL="$AWS_ENDPOINT_URL"
export AWS_REGION="$REGION"
export AWS_DEFAULT_REGION="$REGION"
export AWS_ACCESS_KEY_ID="testing"
export AWS_SECRET_ACCESS_KEY="testing"
ENV
# shellcheck source=/dev/null
source "$DEV/env"

echo "seeding AWS (VPC, AMIs, integration DB and snapshots, ECR images)"
"$PYTHON" "$ROOT/hack/seed_aws.py" --endpoint "$MOTO_ENDPOINT" --region "$REGION" \
    --cluster-id "$CLUSTER_ID" --out "$DEV/seed.json" >"$DEV/seed.log" 2>&1

echo "applying CRDs, the example class and pool"
kubectl apply -f "$ROOT/crds/" >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null
"$PYTHON" "$ROOT/hack/render_example.py" --seed "$DEV/seed.json" \
    "$ROOT/examples/featureenvironmentclass.yaml" "$ROOT/examples/rdspool.yaml" | kubectl apply -f - >/dev/null

echo "installing the chart's ServiceAccount and RBAC; the operator runs as that ServiceAccount"
kubectl create namespace "$RELEASE_NAMESPACE" >/dev/null
"$PYTHON" "$ROOT/hack/render_chart.py" --namespace "$RELEASE_NAMESPACE" --cluster-id "$CLUSTER_ID" | kubectl apply -f - >/dev/null
echo "installing the chart's roles for people, its class reader and its admission policy"
"$PYTHON" "$ROOT/hack/render_chart.py" --namespace "$RELEASE_NAMESPACE" --cluster-id "$CLUSTER_ID" \
    --component user-rbac --kinds ClusterRole,ClusterRoleBinding | kubectl apply -f - >/dev/null
"$PYTHON" "$ROOT/hack/render_chart.py" --namespace "$RELEASE_NAMESPACE" --cluster-id "$CLUSTER_ID" \
    --component admission --kinds ValidatingAdmissionPolicy,ValidatingAdmissionPolicyBinding | kubectl apply -f - >/dev/null
# A token from the TokenRequest API, valid for a day (restart the stack after that).
token="$(kubectl create token "$OPERATOR_SA" -n "$RELEASE_NAMESPACE" --duration=24h)"
server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$DEV/k8s/ca-for-operator.crt"
OPERATOR_KUBECONFIG="$DEV/operator.kubeconfig"
rm -f "$OPERATOR_KUBECONFIG"
kubectl config --kubeconfig="$OPERATOR_KUBECONFIG" set-cluster local --server="$server" \
    --certificate-authority="$DEV/k8s/ca-for-operator.crt" --embed-certs=true >/dev/null
kubectl config --kubeconfig="$OPERATOR_KUBECONFIG" set-credentials operator --token="$token" >/dev/null
kubectl config --kubeconfig="$OPERATOR_KUBECONFIG" set-context operator --cluster=local --user=operator >/dev/null
kubectl config --kubeconfig="$OPERATOR_KUBECONFIG" use-context operator >/dev/null

echo "starting the boot simulator"
FEATUREENV_SIM_BOOT_SECONDS="${FEATUREENV_SIM_BOOT_SECONDS:-3}" "$PYTHON" "$ROOT/hack/boot_simulator.py" --instances-dir "$DEV/instances" \
    --endpoint "$MOTO_ENDPOINT" --region "$REGION" --cluster-id "$CLUSTER_ID" --interval 0.5 \
    >"$DEV/boot-simulator.log" 2>&1 &
echo $! >"$DEV/boot-simulator.pid"

echo "starting the operator"
HTTP_PORT="$(free_port)"
echo "$HTTP_PORT" >"$DEV/operator.port"
AWS_ACCESS_KEY_ID="$OPERATOR_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$OPERATOR_ACCESS_KEY" \
    FEATUREENV_CLUSTER_ID="$CLUSTER_ID" \
    FEATUREENV_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
    FEATUREENV_FAST_POLL_INTERVAL="${FEATUREENV_FAST_POLL_INTERVAL:-1s}" \
    FEATUREENV_SLOW_POLL_INTERVAL="${FEATUREENV_SLOW_POLL_INTERVAL:-30s}" \
    POD_NAMESPACE="$RELEASE_NAMESPACE" POD_NAME=dev-operator KUBECONFIG="$OPERATOR_KUBECONFIG" \
    "$OPERATOR_BIN" run >"$DEV/operator.log" 2>&1 &
echo $! >"$DEV/operator.pid"
wait_for "the operator's /readyz" 60 "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/readyz')"
wait_for "the operator to lead" 60 grep -q "controllers started" "$DEV/operator.log"

trap - ERR
echo "local stack up: source $DEV/env; operator metrics at http://127.0.0.1:$HTTP_PORT/metrics"
