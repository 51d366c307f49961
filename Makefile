# atv-prune: every target installs what it needs first, so each works on a fresh machine.
SHELL := /bin/bash
# Every target runs on the project's Node.js 24 LTS (scripts/node-runtime.sh fetches the pinned
# node-linux-<arch> binary from the npm registry once), whatever Node the system has: npm ci then
# checks engines against Node 24, and node_modules/.bin/node (the same binary) comes first after it.
RUNTIME := $(shell scripts/node-runtime.sh)
ifeq ($(RUNTIME),)
$(error could not fetch the Node.js runtime: see scripts/node-runtime.sh)
endif
export PATH := $(CURDIR)/node_modules/.bin:$(RUNTIME):$(PATH)
# onnxruntime-node's install script would download CUDA binaries: skipped for npm versions that
# do not read package.json's allowScripts (see .npmrc).
export ONNXRUNTIME_NODE_INSTALL := skip
NODE_STAMP := node_modules/.package-lock.json
CLI := node dist/services/cli/src/main.js
DEMO := .work/demo

.PHONY: setup build test demo bench generate clean system-deps

setup: build

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund

build: $(NODE_STAMP)
	npx tsc -p tsconfig.json
	chmod +x dist/services/cli/src/main.js

# Regenerates the protobuf-es code from proto/ (offline: local protoc-gen-es plugin).
generate: $(NODE_STAMP)
	npx buf generate

# Debian packages the cluster tests start for real: nats-server (JetStream), openssl (test
# certificates) and prometheus (scrapes a cluster; its promtool checks the alert rules).
system-deps:
	@missing=""; \
	command -v nats-server >/dev/null 2>&1 || missing="$$missing nats-server"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y $$missing; \
	fi

test: setup system-deps
	@echo "node $$(node --version), npm $$(npm --version)"
	npm test

# Generates a small LLaVA-style decoder with fused contrib ops and fp16 weights, prunes it with
# ATV at 50%, and prints the report summary.
demo: setup
	rm -rf $(DEMO)
	$(CLI) gen-model --layers 4 --hidden 256 --fused --fp16 --samples 16 --out $(DEMO)/model > /dev/null
	$(CLI) inspect $(DEMO)/model/model.onnx
	$(CLI) prune --model $(DEMO)/model/model.onnx --calib $(DEMO)/model/calib.jsonl \
		--method atv --sparsity 0.5 --out $(DEMO)/pruned > $(DEMO)/events.jsonl
	@echo "events: $(DEMO)/events.jsonl; report: $(DEMO)/pruned/report.json"

bench: setup
	npm run bench

clean:
	rm -rf dist .work
