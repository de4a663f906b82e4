# sessiond — see README.md. Every target installs what it needs first (idempotently).
SHELL      := /bin/bash
export PATH := /usr/local/go/bin:/usr/local/bin:$(PATH)
GO         ?= go
DATA_DIR   ?= /var/lib/sessiond
SESSIOND   := bin/sessiond -data-dir $(DATA_DIR)
VERSION    := $(shell git describe --always --dirty 2>/dev/null || echo dev)
TEST_TIMEOUT ?= 20m

.PHONY: all build deps image-small image-python run smoke test test-short bench clean

all: build

## build: the control plane, the static agent and the kernel preload library into bin/
build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/sessiond ./cmd/sessiond
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/sessiond-agent ./cmd/sessiond-agent
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o bin/sessiond-kernel-preload.so internal/agent/preload/kernel_preload.c

## deps: runc, runsc, mmdebstrap and friends (scripts/install-deps.sh)
deps:
	./scripts/install-deps.sh

## image-small: python3 + ipykernel, used by the tests (about a minute the first time)
image-small: deps build
	@$(SESSIOND) image inspect python-small >/dev/null 2>&1 || $(SESSIOND) image build python-small

## image-python: the default code-interpreter image with the scientific stack (about 3.5 minutes, 780 MiB)
image-python: deps build
	@$(SESSIOND) image inspect python >/dev/null 2>&1 || $(SESSIOND) image build python

## run: install what is missing, build, and serve the default pool on 127.0.0.1:8080
LISTEN ?= 127.0.0.1:8080
run: deps build image-python
	$(SESSIOND) serve -listen $(LISTEN) $(if $(CONFIG),-config $(CONFIG))

## smoke: run one command in a fresh sandbox
smoke: deps build image-small
	$(SESSIOND) sandbox run -image python-small -- python3 -c 'import sys; print("sessiond sandbox ok: python", sys.version.split()[0])'

## test: every test, against real runc and runsc sandboxes (fails rather than skips)
test: deps build image-small
	SESSIOND_TEST_REQUIRE=1 SESSIOND_DATA_DIR=$(DATA_DIR) $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

## test-short: the tests that need no sandbox
test-short:
	$(GO) test -race -short ./...

## bench: sandbox latency and memory, both runtimes (see docs/BENCHMARKS.md)
bench: deps build image-small
	$(SESSIOND) bench sandbox -image python-small

clean:
	rm -rf bin
