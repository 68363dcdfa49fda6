# klock: run this, but never twice at once.

# Kubernetes release the test control plane is built from (test/go.mod pins
# the same one).
KUBE_VERSION ?= v1.37.1
KUBE_MINOR := $(word 2,$(subst ., ,$(KUBE_VERSION)))
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

BIN := $(CURDIR)/bin
ASSETS := $(BIN)/k8s/$(KUBE_VERSION)
GO ?= go
GO_LDFLAGS := -s -w -X github.com/klock-io/klock/internal/version.Version=$(VERSION)
KUBE_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(KUBE_MINOR)

CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN := $(BIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)

export KUBEBUILDER_ASSETS := $(ASSETS)

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
		/^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: fmt
fmt: ## Format the code.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet on both modules.
	$(GO) vet ./...
	cd test && $(GO) vet ./...

.PHONY: generate
generate: controller-gen ## Generate the API's deepcopy code, the CRD (deploy/ and the chart) from api/.
	$(CONTROLLER_GEN) object paths=./api/...
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:dir=deploy/base/crd
	{ echo '{{- if .Values.crds.enabled }}'; \
	  echo '# Generated from api/ by make generate; do not edit.'; \
	  sed -e '/^---$$/d' -e 's|^  annotations:$$|  annotations:\n    helm.sh/resource-policy: keep|' deploy/base/crd/klock.io_clusterlockpolicies.yaml; \
	  echo '{{- end }}'; } > charts/klock/templates/crd-clusterlockpolicies.yaml

.PHONY: verify
verify: generate ## Fail if code is unformatted, generated files are stale, or go.mod files are untidy.
	@git diff --quiet -- api deploy/base/crd charts/klock/templates/crd-clusterlockpolicies.yaml || { git diff --stat -- api deploy/base/crd charts/klock/templates; echo "generated files were stale: commit what make generate wrote"; exit 1; }
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "run make fmt"; exit 1; }
	$(GO) mod tidy -diff
	cd test && $(GO) mod tidy -diff
	@$(MAKE) --no-print-directory verify-files

# Tracked files that may be over MAX_FILE_BYTES or executable binaries; none
# today. Add a path here, with the reason in the commit, to allow one.
LARGE_FILE_EXCEPTIONS :=
MAX_FILE_BYTES := 1048576

.PHONY: verify-files
verify-files: ## Fail if git tracks an executable binary (ELF, Mach-O, PE) or a file over 1 MiB.
	@bad=; for f in $$(git ls-files); do \
		[ -f "$$f" ] || continue; \
		case " $(LARGE_FILE_EXCEPTIONS) " in *" $$f "*) continue;; esac; \
		size=$$(wc -c < "$$f"); \
		if [ "$$size" -gt $(MAX_FILE_BYTES) ]; then echo "$$f: $$size bytes, over the 1 MiB limit for tracked files"; bad=1; fi; \
		magic=$$(head -c 4 "$$f" | od -An -tx1 | tr -d ' \n'); \
		case "$$magic" in 7f454c46|cffaedfe|cefaedfe|feedfacf|feedface|4d5a*) \
			echo "$$f: an executable binary (magic $$magic) is tracked"; bad=1;; esac; \
	done; \
	if [ -n "$$bad" ]; then echo "remove these from git (git rm --cached FILE) or list them in LARGE_FILE_EXCEPTIONS with a reason"; exit 1; fi

.PHONY: test
test: verify vet unit integration ## Run all tests: unit, then integration against a real API server.

.PHONY: unit
unit: ## Run the unit tests.
	$(GO) test -race -count=1 ./...

.PHONY: integration
integration: control-plane ## Run the integration tests against a real kube-apiserver and etcd, and the image builder's.
	cd test && $(GO) test -race -count=1 -timeout 20m ./integration/... ./image/... ./deploy/... ./chaos/...

.PHONY: e2e
e2e: e2e-deps control-plane node ## Run the end-to-end tests on a real single-node cluster (root; installs its Debian packages).
	cd test && $(GO) vet -tags e2e ./e2e/... && $(GO) test -count=1 ./e2e/cluster/
	cd test && $(GO) test -tags e2e -count=1 -timeout 30m -v ./e2e/ -args -bin $(ASSETS) -logs $(BIN)/e2e-logs $(E2E_ARGS)

# The end-to-end cluster's host packages, installed when a command is missing.
E2E_PACKAGES := containerd runc containernetworking-plugins busybox-static iptables conntrack iproute2
E2E_COMMANDS := containerd ctr runc /usr/lib/cni/bridge /bin/busybox iptables conntrack ip

.PHONY: e2e-deps
e2e-deps: ## Install the Debian packages the end-to-end cluster needs, if missing.
	@missing=; for c in $(E2E_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing $(E2E_PACKAGES)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(E2E_PACKAGES); \
	fi

.PHONY: fuzz
fuzz: ## Fuzz the pod mutation, the pod handler and the registry client, a minute each (FUZZTIME=10m for longer).
	$(GO) test -run '^$$' -fuzz FuzzMutate -fuzztime $(or $(FUZZTIME),1m) ./webhook/wrap
	$(GO) test -run '^$$' -fuzz FuzzPodHandler -fuzztime $(or $(FUZZTIME),1m) ./webhook
	$(GO) test -run '^$$' -fuzz FuzzResolve -fuzztime $(or $(FUZZTIME),1m) ./webhook/images

.PHONY: bench
bench: control-plane ## Measure the lock (handoff, takeover, overhead, requests, size) and the webhook (mutation, pod-create latency, throughput).
	cd test && $(GO) test -count=1 -timeout 30m -run '^$$' -bench . -benchtime 1x ./bench/...

.PHONY: demo
demo: control-plane build ## Start a local control plane: two klock runs contending, a counting lock with a queue, then the webhook wrapping workloads.
	cd test && $(GO) run ./demo -klock $(BIN)/klock

##@ Fault tests

# The fault suite (test/chaos) runs on a control plane of its own, which it
# restarts. make integration runs its fast part: no restarts, 100
# acquisitions.
.PHONY: chaos
chaos: control-plane ## Run every fault scenario at full size (kills, cuts, lost answers, restarts, clock skew, 2,000 contended acquisitions); prints a results table.
	cd test && $(GO) test -count=1 -timeout 60m -v ./chaos/ -args -full

.PHONY: soak
soak: control-plane ## Run the contention scenario at 10,000 acquisitions by 50 klock processes.
	cd test && $(GO) test -count=1 -timeout 3h -v -run '^TestContention$$' ./chaos/ -args -full -acquisitions 10000

##@ Build

.PHONY: build
build: ## Build the static klock and klock-webhook binaries into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(GO_LDFLAGS)' -o $(BIN)/klock ./cmd/klock
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(GO_LDFLAGS)' -o $(BIN)/klock-webhook ./cmd/klock-webhook

.PHONY: image-tarball
image-tarball: build ## Build the klock image (the Dockerfile's layout) into bin/klock-image.tar, without Docker.
	cd test && $(GO) run ./cmd/klock-image -klock $(BIN)/klock -webhook $(BIN)/klock-webhook -tag ghcr.io/klock-io/klock:$(VERSION) -o $(BIN)/klock-image.tar

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Build controller-gen into bin/.

$(CONTROLLER_GEN):
	GOBIN=$(dir $@) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(dir $@)controller-gen $@

.PHONY: control-plane
control-plane: $(ASSETS)/kube-apiserver $(ASSETS)/etcd ## Build kube-apiserver and etcd from their Go modules (cached in bin/).

# Both in one go build, so that the packages they share compile once and
# the two links run side by side. A first build says what it is doing: it
# is the longest silent step a new checkout takes.
$(ASSETS)/kube-apiserver $(ASSETS)/etcd &:
	@echo "Building kube-apiserver and etcd $(KUBE_VERSION) from their Go modules into bin/ for the tests."
	@echo "This happens once: about 20 CPU-minutes with empty caches, so 10 minutes on 2 idle cores and more on a busy machine."
	@start=$$(date +%s); cd test && $(GO) list -deps k8s.io/kubernetes/cmd/kube-apiserver go.etcd.io/etcd/server/v3 >/dev/null && \
		echo "control plane: modules downloaded ($$(( $$(date +%s) - start ))s)"
	@start=$$(date +%s); mkdir -p $(ASSETS)/.build && cd test && \
		$(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(ASSETS)/.build/ k8s.io/kubernetes/cmd/kube-apiserver go.etcd.io/etcd/server/v3 && \
		mv $(ASSETS)/.build/kube-apiserver $(ASSETS)/kube-apiserver && mv $(ASSETS)/.build/server $(ASSETS)/etcd && rmdir $(ASSETS)/.build && \
		echo "control plane: kube-apiserver and etcd built ($$(( $$(date +%s) - start ))s)"

NODE_BINARIES := kube-controller-manager kube-scheduler kubelet kube-proxy

.PHONY: node
node: $(addprefix $(ASSETS)/,$(NODE_BINARIES)) ## Build the controller manager, scheduler, kubelet and kube-proxy for make e2e (cached in bin/).

$(addprefix $(ASSETS)/,$(NODE_BINARIES)):
	cd test && $(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $@ k8s.io/kubernetes/cmd/$(notdir $@)

.PHONY: clean
clean: ## Remove built binaries (keeps the cached control plane).
	rm -f $(BIN)/klock
