// Command klock runs a command while it holds a Kubernetes Lease.
package main

import (
	"context"
	"os"

	"github.com/klock-io/klock/internal/cli"
	"github.com/klock-io/klock/internal/process"
)

func main() {
	// klock runs the command under a copy of itself; that copy stops here.
	process.RunIfSupervisor()
	streams := cli.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}
	var err error
	if cli.IsPlugin(os.Args[0]) {
		// Installed as kubectl-klock: `kubectl klock status ...`.
		err = cli.ExecutePlugin(context.Background(), os.Args[1:], streams)
	} else {
		err = cli.Execute(context.Background(), os.Args[1:], streams, cli.Run)
	}
	os.Exit(cli.Exit(err, os.Stderr))
}
