# dnsaccel — see README.md. Every target runs on Debian 12 as root.
SHELL := /bin/bash
GO ?= go
BINARIES := coredns node-cache pvtz-sync pvtz-webhook pvtzctl cloud-emulator eni-cni eni-agent dnsaccelctl datapath-agent
export DNSACCEL_CACHE ?= $(HOME)/.cache/dnsaccel
GOFLAGS_BUILD := -trimpath

.PHONY: all build test demo demo-cache bench generate lint clean deps kube kube-node images images-docker realnode-up realnode-down realnode-test

all: build

build:
	@mkdir -p bin
	@for b in $(BINARIES); do CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/$$b ./cmd/$$b || exit 1; done

# Tools and packages the tests need, installed idempotently.
deps:
	@./hack/deps.sh

# The Kubernetes binaries `make test` runs (the test API server, kubectl and
# the controller manager's EndpointSlice controller), built once into
# $(DNSACCEL_CACHE).
kube:
	@$(GO) run ./test/cluster/cmd/build-kube kube-apiserver kubectl kube-controller-manager

# All of them, with the scheduler, kube-proxy and kubelet of the real test
# node (test/realnode).
kube-node:
	@$(GO) run ./test/cluster/cmd/build-kube -all

# The packages with concurrency of their own run once, under the race
# detector; every other package runs once without it.
RACE_PKGS := ./plugin/... ./nodecache/... ./datapath/... ./cni/agent/... ./externaldns/controller/... ./externaldns/source/... ./externaldns/ctl/... ./alicloud/...

test: deps build kube lint
	@race=$$($(GO) list $(RACE_PKGS)); \
	rest=$$($(GO) list ./... | grep -vxF -f <(echo "$$race")); \
	$(GO) test -count=1 -timeout 30m $$rest && \
	$(GO) test -count=1 -race -timeout 20m $$race

# The whole node on one machine (test/node), step by step, then torn down.
demo: deps build kube
	$(GO) run ./hack/demo

# The node cache alone on loopback.
demo-cache: deps build
	$(GO) run ./hack/demo-cache

bench: deps build kube
	$(GO) run ./test/bench/dnsbench -out docs/benchmarks.md
	$(GO) run ./test/bench/autopathbench -out docs/benchmarks.md
	$(GO) run ./test/bench/steerbench -out docs/benchmarks.md
	$(GO) run ./test/bench/kcachebench -out docs/benchmarks.md
	$(GO) run ./test/bench/pvtzbench -out docs/benchmarks.md
	$(GO) run ./test/bench/enibench -out docs/benchmarks.md
	$(GO) run ./test/bench/webhookbench -out docs/benchmarks.md

# bpf2go (pinned in go.mod as a tool) with Debian's clang; the datapath
# package's TestGeneratedUpToDate (part of `make test`) fails when the
# committed output is stale.
generate:
	$(GO) generate ./...

lint:
	@bad=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go' | grep -v '_bpfe[lb]\.go$$')); \
	if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

# Container images without Docker or a registry (build/images: one layer
# per binary on a small base, a pause image, dnsaccel/dnstools), as
# docker-archive tars in bin/images; imported into the real test node's
# containerd when one runs (make realnode-up imports them at start).
IMAGE_PREFIX ?= dnsaccel
IMAGE_TAG ?= dev
images: build
	@$(GO) run ./build/images -bin bin -out bin/images -tag $(IMAGE_TAG)
	@if [ -e /run/dnsaccel-realnode.json ]; then $(GO) run ./test/realnode/cmd/realnode import; fi

# The same images from build/Dockerfile, where a Docker engine runs.
images-docker:
	@for b in $(BINARIES); do \
		docker build -f build/Dockerfile --target $$b -t $(IMAGE_PREFIX)/$$b:$(IMAGE_TAG) . || exit 1; \
	done

# A real Kubernetes node on this machine (test/realnode: kubelet +
# containerd + kube-proxy next to the test API server), in the background;
# then `kubectl apply -k manifests/overlays/realnode` (docs/realnode.md).
realnode-up: deps images kube-node
	@$(GO) build -o bin/realnode ./test/realnode/cmd/realnode
	@bin/realnode up --detach

# The real node's whole user path as a test (test/realnode.TestRealNode).
realnode-test: deps build kube-node
	DNSACCEL_REALNODE=1 $(GO) test -count=1 -v -timeout 20m -run TestRealNode ./test/realnode/

realnode-down:
	@$(GO) build -o bin/realnode ./test/realnode/cmd/realnode
	@bin/realnode down

clean:
	rm -rf bin
