#!/bin/sh
# install-deps.sh installs what sessiond needs on a Debian 12 machine, idempotently:
# Debian packages (libseccomp, mmdebstrap, iproute2), a current runc built from the Go
# module proxy with seccomp support, and gVisor's runsc built from the Go module proxy.
# Binaries go to $PREFIX (default /usr/local/bin). Run as root.
set -eu

PREFIX=${PREFIX:-/usr/local/bin}
RUNC_VERSION=${RUNC_VERSION:-v1.5.2}
# A pseudo-version of the gVisor "go" branch (the Go-buildable mirror of master); the proxy
# does not resolve the branch name itself.
RUNSC_VERSION=${RUNSC_VERSION:-v0.0.0-20260905035102-160fafc42237}
export PATH="/usr/local/go/bin:$PATH"

log() { echo "install-deps: $*" >&2; }

need_pkgs=""
# python3-ipykernel and friends on the host serve the fast tests that run real kernels
# without a sandbox (sandboxtest.Fake); sandboxes get theirs from their image. openssl
# signs tokens independently of Go in internal/auth's interop test. gcc builds runc's
# seccomp support and sessiond's kernel preload library (make build).
for p in libseccomp-dev mmdebstrap iproute2 pkg-config gcc uidmap openssl \
	python3-ipykernel python3-jupyter-client python3-numpy python3-matplotlib python3-pandas \
	python3-setuptools; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs="$need_pkgs $p"
done
if [ -n "$need_pkgs" ]; then
	log "installing Debian packages:$need_pkgs"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends $need_pkgs >/dev/null
fi

gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT

if ! "$PREFIX/runc" --version 2>/dev/null | grep -q "runc version ${RUNC_VERSION#v}"; then
	log "building runc $RUNC_VERSION with seccomp"
	GOBIN="$gobin" CGO_ENABLED=1 go install -tags seccomp "github.com/opencontainers/runc@$RUNC_VERSION"
	install -m 0755 "$gobin/runc" "$PREFIX/runc"
fi

if ! [ -x "$PREFIX/runsc" ] || ! [ -f "$PREFIX/.runsc-$RUNSC_VERSION" ]; then
	log "building gVisor runsc@$RUNSC_VERSION (about 2 minutes)"
	GOBIN="$gobin" CGO_ENABLED=0 go install "gvisor.dev/gvisor/runsc@$RUNSC_VERSION"
	install -m 0755 "$gobin/runsc" "$PREFIX/runsc"
	touch "$PREFIX/.runsc-$RUNSC_VERSION"
fi
log "runc: $("$PREFIX/runc" --version | head -1)"
log "runsc: $("$PREFIX/runsc" --version | head -1)"
