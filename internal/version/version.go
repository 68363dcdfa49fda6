// Package version holds the version stamped into klock's binaries at build
// time with -ldflags "-X github.com/klock-io/klock/internal/version.Version=v1.2.3".
package version

// Version is the release version, "dev" in an unstamped build.
var Version = "dev"
