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
	err := cli.Execute(context.Background(), os.Args[1:], cli.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}, cli.Run)
	os.Exit(cli.Exit(err, os.Stderr))
}
