module github.com/sessiond/sessiond

go 1.26.8

require (
	github.com/opencontainers/runtime-spec v1.3.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
